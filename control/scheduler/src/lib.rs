//! The scheduler: binds pending pods to nodes through pods/binding, with filter and score plug-ins.
