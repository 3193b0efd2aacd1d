//! Front end: `.mtl` text to AST (pest grammar in `grammar/mtl.pest`).

pub mod ast;
mod parser;

pub use parser::parse;
