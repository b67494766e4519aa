//! `#[repr(C)]` key and value types of the BPF maps: the contract between the eBPF programs and
//! the agent. Empty until the dataplane issue defines the first maps.
#![no_std]
