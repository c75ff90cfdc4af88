//! The sender's pieces, wired together by `main.rs`.

pub mod kube;
