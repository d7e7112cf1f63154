//! Test harness for the end-to-end suite: locating the project's tools and running a real
//! control plane.
