//! The receiver's pieces, wired together by `main.rs`.
