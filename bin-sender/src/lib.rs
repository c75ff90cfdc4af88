//! The sender's pieces, wired together by `main.rs`.
