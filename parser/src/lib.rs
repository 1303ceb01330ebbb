//! The Dockerfile front end: bytes -> syntax tree -> typed instructions.
//!
//! Architecture invariant: pure. No I/O (INCLUDE asks a loader), deterministic, never panics,
//! never stops at the first error: every entry point returns what it could build plus
//! diagnostics with byte spans.

pub mod ast;
pub mod bkformat;
pub mod diag;
pub mod golang;
pub mod gomatch;
pub mod ignore;
pub mod include;
pub mod instructions;
pub mod shell;
pub mod source;
pub mod syntax;

pub use ast::{Directive, Dockerfile, FileId, Heredoc, Node, Span, Word};
pub use diag::{Diagnostic, Severity};
pub use source::{SourceFile, SourceMap};
pub use syntax::{Parsed, parse};
