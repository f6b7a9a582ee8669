//! Static checks of generated Rust code, for the evaluation harness.
//!
//! * [`parse_check`] — does the text parse as a Rust source file (`syn::File`)?
//!   A cheap proxy for "looks like Rust", far faster than `rustc`.
//! * [`ast_metrics`] — number of functions, lines and cyclomatic complexity
//!   (defined in [`metrics`]).
//!
//! Generated code is untrusted input. `syn` parses by recursive descent, so a
//! pathological input (say 100 000 nested parentheses or `!!!!…x`) would
//! overflow the caller's stack and abort the whole process (a Python
//! interpreter, here). Two guards prevent that: sources above
//! [`MAX_SOURCE_BYTES`] are refused, and every parse runs on a dedicated thread
//! whose stack is large enough for the deepest nesting a source of that size
//! can express (see [`stack_bytes_for`]). Delimiter nesting deeper than
//! [`MAX_GROUP_DEPTH`] is refused up front, since no real code needs it.
use std::fmt;
use std::str::FromStr;

pub mod extract;
pub mod policy;
pub mod metrics;

pub use extract::{extract_items, ExtractedItem, ItemKind};
pub use policy::completion_escape;
pub use metrics::{AstMetrics, FunctionMetrics};

/// Largest source accepted (bytes). Model completions are a few KiB; this
/// bound keeps the worst-case parser stack (see [`stack_bytes_for`]) finite.
pub const MAX_SOURCE_BYTES: usize = 256 << 10;

/// Deepest nesting of `()`, `[]`, `{}` accepted.
pub const MAX_GROUP_DEPTH: usize = 256;

/// Why a source was not analysed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckError {
    /// The source does not parse as Rust. `line` is 1-based, `column` 0-based
    /// (in chars), as `proc_macro2` reports them.
    Syntax {
        line: usize,
        column: usize,
        message: String,
    },
    /// The source is larger than [`MAX_SOURCE_BYTES`].
    TooLarge { bytes: usize },
    /// Delimiters nest deeper than [`MAX_GROUP_DEPTH`].
    TooDeep { depth: usize },
    /// The parser thread could not be started or died (out of memory).
    Internal(String),
}

impl fmt::Display for CheckError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CheckError::Syntax {
                line,
                column,
                message,
            } => {
                write!(f, "syntax error at line {line}, column {column}: {message}")
            }
            CheckError::TooLarge { bytes } => write!(
                f,
                "source is {bytes} bytes, more than the {MAX_SOURCE_BYTES} bytes accepted"
            ),
            CheckError::TooDeep { depth } => write!(
                f,
                "delimiters nest {depth} levels deep, more than the {MAX_GROUP_DEPTH} accepted"
            ),
            CheckError::Internal(why) => write!(f, "parser failed: {why}"),
        }
    }
}

impl std::error::Error for CheckError {}

/// Checks that `source` parses as a Rust file (items at the top level).
pub fn parse_check(source: &str) -> Result<(), CheckError> {
    with_parsed(source, |_| ())
}

/// Parses `source` and measures it. Fails like [`parse_check`].
pub fn ast_metrics(source: &str) -> Result<AstMetrics, CheckError> {
    with_parsed(source, |file| metrics::measure(file, source))
}

/// Parser stack reserved per byte of source (see [`stack_bytes_for`]).
const STACK_PER_BYTE: usize = 16 << 10;

/// Stack for a parser thread: a fixed base plus a per-byte allowance that
/// covers the deepest recursion `syn` can reach on `len` bytes. Every nesting
/// level costs at least one byte of source; the most stack-hungry chain found
/// (`type T = &&&&…u8;`, see `tests/pathological.rs`) needs between 2 and
/// 3 KiB per byte in debug and release builds, so 16 KiB per byte leaves a
/// margin of five. Thread stacks are reserved, not committed: a 2 KiB
/// completion reserves 40 MiB of address space but touches only what it uses.
pub fn stack_bytes_for(len: usize) -> usize {
    (8 << 20) + len.saturating_mul(STACK_PER_BYTE)
}

/// Lexes, guards, parses and runs `work` on the AST — all on a thread with a
/// stack sized by [`stack_bytes_for`], so deep inputs cannot overflow the caller.
fn with_parsed<T, F>(source: &str, work: F) -> Result<T, CheckError>
where
    T: Send,
    F: FnOnce(&syn::File) -> T + Send,
{
    with_parsed_tokens(source, |file, _| work(file))
}

/// [`with_parsed`], also handing `work` the lexed token stream (spans of
/// literals, comments' doc attributes, ...).
pub(crate) fn with_parsed_tokens<T, F>(source: &str, work: F) -> Result<T, CheckError>
where
    T: Send,
    F: FnOnce(&syn::File, &proc_macro2::TokenStream) -> T + Send,
{
    if source.len() > MAX_SOURCE_BYTES {
        return Err(CheckError::TooLarge {
            bytes: source.len(),
        });
    }
    let stack = stack_bytes_for(source.len());
    std::thread::scope(|scope| {
        let handle = std::thread::Builder::new()
            .name("evalrs-parse".into())
            .stack_size(stack)
            .spawn_scoped(scope, || parse_and_run(source, work))
            .map_err(|e| CheckError::Internal(format!("cannot start parser thread: {e}")))?;
        handle
            .join()
            .map_err(|_| CheckError::Internal("parser thread panicked".into()))?
    })
}

fn syntax_error(span: proc_macro2::Span, message: String) -> CheckError {
    let start = span.start();
    CheckError::Syntax { line: start.line, column: start.column, message }
}

fn parse_and_run<T>(
    source: &str,
    work: impl FnOnce(&syn::File, &proc_macro2::TokenStream) -> T,
) -> Result<T, CheckError> {
    // The lexer is iterative, so lexing first lets us measure the nesting
    // depth before the recursive parser sees the tokens.
    let tokens = proc_macro2::TokenStream::from_str(source)
        .map_err(|e| syntax_error(e.span(), e.to_string()))?;
    let depth = group_depth(tokens.clone());
    if depth > MAX_GROUP_DEPTH {
        return Err(CheckError::TooDeep { depth });
    }
    let file: syn::File = syn::parse2(tokens.clone()).map_err(|e| syntax_error(e.span(), e.to_string()))?;
    Ok(work(&file, &tokens))
}

/// Deepest delimiter nesting in `tokens`, computed without recursion.
fn group_depth(tokens: proc_macro2::TokenStream) -> usize {
    let mut deepest = 0;
    let mut pending = vec![(tokens, 0usize)];
    while let Some((stream, depth)) = pending.pop() {
        deepest = deepest.max(depth);
        for tree in stream {
            if let proc_macro2::TokenTree::Group(group) = tree {
                pending.push((group.stream(), depth + 1));
            }
        }
    }
    deepest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_file_parses() {
        assert_eq!(
            parse_check("fn main() { let x = 1 + 2; println!(\"{x}\"); }"),
            Ok(())
        );
        assert_eq!(parse_check(""), Ok(()));
        assert_eq!(
            parse_check("struct S { a: u8 }\nimpl S { fn f(&self) -> u8 { self.a } }"),
            Ok(())
        );
    }

    #[test]
    fn syntax_error_reports_position() {
        let err = parse_check("fn main() {\n    let x = ;\n}").unwrap_err();
        match err {
            CheckError::Syntax {
                line,
                column,
                message,
            } => {
                assert_eq!(line, 2);
                assert_eq!(column, 12);
                assert!(message.contains("expected"), "{message}");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn lex_error_reports_position() {
        // An unclosed delimiter is caught by the lexer, before syn parses.
        let err = parse_check("fn f() {\n  (1, 2\n}").unwrap_err();
        assert!(matches!(err, CheckError::Syntax { .. }), "{err:?}");
        let err = parse_check("fn f() { \"unterminated }").unwrap_err();
        assert!(matches!(err, CheckError::Syntax { .. }), "{err:?}");
    }

    #[test]
    fn expression_at_top_level_is_not_a_file() {
        assert!(matches!(
            parse_check("1 + 2"),
            Err(CheckError::Syntax { .. })
        ));
    }

    #[test]
    fn oversized_source_is_refused() {
        let big = " ".repeat(MAX_SOURCE_BYTES + 1);
        assert_eq!(
            parse_check(&big),
            Err(CheckError::TooLarge {
                bytes: MAX_SOURCE_BYTES + 1
            })
        );
    }

    #[test]
    fn deep_delimiters_are_refused_not_overflowed() {
        let n = 100_000;
        let src = format!("fn f() {{ {}0{} }}", "(".repeat(n), ")".repeat(n));
        assert_eq!(parse_check(&src), Err(CheckError::TooDeep { depth: n + 1 }));
        // At the limit it still parses.
        let ok = format!("fn f() {{ {}0{} }}", "(".repeat(200), ")".repeat(200));
        assert_eq!(parse_check(&ok), Ok(()));
    }

    #[test]
    fn deep_unary_chain_is_parsed_without_overflow() {
        // No delimiters, yet syn recurses once per `!`: the sized stack copes.
        for n in [10_000, 200_000] {
            let src = format!("fn f() -> bool {{ {}true }}", "!".repeat(n));
            assert_eq!(parse_check(&src), Ok(()), "n = {n}");
            assert_eq!(ast_metrics(&src).unwrap().functions, 1);
        }
    }

    #[test]
    fn deep_else_if_chain_and_generics_are_parsed() {
        let chain: String = (0..5_000)
            .map(|i| format!("if x == {i} {{ {i} }} else "))
            .collect();
        let src = format!("fn f(x: u32) -> u32 {{ {chain} {{ 0 }} }}");
        let m = ast_metrics(&src).unwrap();
        assert_eq!(m.cyclomatic_max, 1 + 5_000);
        let ty = format!(
            "type T = {}u8{};",
            "Vec<".repeat(50_000),
            ">".repeat(50_000)
        );
        assert_eq!(parse_check(&ty), Ok(()));
    }

    #[test]
    fn errors_display_clearly() {
        let e = CheckError::TooDeep { depth: 300 };
        assert!(e.to_string().contains("300"));
        let e = parse_check("fn (").unwrap_err();
        assert!(e.to_string().starts_with("syntax error at line 1"), "{e}");
    }
}
