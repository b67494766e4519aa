//! Skiff control plane.
