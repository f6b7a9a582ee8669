//! What a generated function body may not do before its tests count: the harness runs
//! `prompt + body + "\n}" + test`, and a pass must mean the tests ran against the body.
//!
//! [`completion_escape`] refuses two ways around that:
//!
//! * **Leaving the function.** A body that closes the function early can add items at module
//!   level that the test then sees, e.g. `0 }\nmacro_rules! assert_eq { ($($t:tt)*) => {} }\nfn
//!   pad() {` neuters every assertion, and `use std::dbg as assert_eq;` does the same. Such a
//!   program has more top-level items than the prompt and the test bring; a body whose
//!   delimiters only balance with the test's text is refused too.
//! * **Reaching outside the program.** Process exit (`std::process::exit(0)` before the
//!   assertions run looks like a pass to an exit-status check), the arguments and environment
//!   (the batch runner's per-run nonce), files, sockets, `unsafe`, foreign functions, inline
//!   assembly, `include!`-style macros and linkage attributes. Module names count only in
//!   path position (`env::args`, `std::process`, `use std::{fs, ..}`), so a variable called
//!   `env` is fine; keywords, macros and attributes count wherever they appear.
//!
//! A body that is refused here scores 0 whatever it prints; the tasks these harnesses check
//! (HumanEval-style functions over numbers, strings and collections) need none of it.
use proc_macro2::{Delimiter, TokenStream, TokenTree};
use std::str::FromStr;

use crate::{with_parsed, CheckError};

/// Modules of `std` (and the `libc`-style crates) a body may not name in a path.
const MODULES: &[&str] = &["env", "process", "fs", "os", "net", "libc"];
/// Keywords that open the way to raw memory and foreign code.
const KEYWORDS: &[&str] = &["unsafe", "extern"];
/// Macros a body may not invoke.
const MACROS: &[&str] = &["asm", "global_asm", "naked_asm", "include", "include_str", "include_bytes"];
/// Attributes a body may not carry.
const ATTRIBUTES: &[&str] = &["no_mangle", "export_name", "link_section", "link", "link_name", "used", "global_allocator"];

/// `None` when `body` stays inside its function and uses none of the refused features; else
/// the reason. `prompt` ends with the function's opening line; `test` is the program's tail.
/// A body that cannot be analysed (too large or nested too deeply) is refused; a prompt or
/// test that does not parse is an error (the task is broken, not the body). A full program
/// that does not parse is not refused here: the compiler rejects it anyway.
pub fn completion_escape(prompt: &str, body: &str, test: &str) -> Result<Option<String>, CheckError> {
    let count = |source: &str| with_parsed(source, |file| file.items.len());
    let expected = count(&format!("{prompt}\n}}"))? + count(test)?;
    let program = format!("{prompt}{body}\n}}\n{test}");
    let items = match count(&program) {
        Ok(n) => n,
        Err(CheckError::Syntax { .. }) => return Ok(None),
        Err(CheckError::TooLarge { bytes }) => return Ok(Some(format!("the program is {bytes} bytes, too large to check"))),
        Err(CheckError::TooDeep { depth }) => return Ok(Some(format!("delimiters nest {depth} levels deep"))),
        Err(e) => return Err(e),
    };
    if items != expected {
        return Ok(Some(format!(
            "the body leaves its function: the program has {items} top-level items, the prompt and test bring {expected}"
        )));
    }
    let tokens = match TokenStream::from_str(body) {
        Ok(tokens) => tokens,
        Err(_) => return Ok(Some("the body's delimiters balance only with the test's text".into())),
    };
    Ok(forbidden(tokens).map(|what| format!("the body uses {what}, which the harness does not allow")))
}

/// The first refused feature in `tokens`, described (iterative: no recursion on nesting).
/// Each token list is walked with whether it lies in a `use` declaration (`use` seen, no `;`
/// yet): there every module name counts, braced trees (`use std::{env, fs}`) included.
fn forbidden(tokens: TokenStream) -> Option<String> {
    let mut pending = vec![(tokens, false)];
    while let Some((stream, outer_use)) = pending.pop() {
        let trees: Vec<TokenTree> = stream.into_iter().collect();
        let punct = |j: Option<usize>, c: char| matches!(j.and_then(|j| trees.get(j)), Some(TokenTree::Punct(p)) if p.as_char() == c);
        let mut in_use = outer_use;
        for (i, tree) in trees.iter().enumerate() {
            match tree {
                TokenTree::Punct(p) if p.as_char() == ';' => in_use = outer_use,
                TokenTree::Group(group) => {
                    // `#[attr ...]` / `#![attr ...]`: every ident of the attribute.
                    let attribute = punct(i.checked_sub(1), '#') || punct(i.checked_sub(1), '!') && punct(i.checked_sub(2), '#');
                    if group.delimiter() == Delimiter::Bracket && attribute {
                        for inner in group.stream() {
                            if let TokenTree::Ident(id) = inner {
                                let name = unraw(&id.to_string());
                                if ATTRIBUTES.contains(&name.as_str()) {
                                    return Some(format!("the attribute `#[{name}]`"));
                                }
                            }
                        }
                    }
                    pending.push((group.stream(), in_use));
                }
                TokenTree::Ident(id) => {
                    let name = unraw(&id.to_string());
                    if name == "use" {
                        in_use = true;
                    }
                    // `r#unsafe` is an identifier, not the keyword.
                    if KEYWORDS.contains(&id.to_string().as_str()) {
                        return Some(format!("`{name}`"));
                    }
                    if MACROS.contains(&name.as_str()) && punct(Some(i + 1), '!') {
                        return Some(format!("the macro `{name}!`"));
                    }
                    // A path segment: `::` (two ':' puncts) right before or after it.
                    let path = punct(Some(i + 1), ':') && punct(Some(i + 2), ':') || i >= 2 && punct(Some(i - 1), ':') && punct(Some(i - 2), ':');
                    if MODULES.contains(&name.as_str()) && (path || in_use) {
                        return Some(format!("the module `{name}`"));
                    }
                }
                _ => {}
            }
        }
    }
    None
}

fn unraw(name: &str) -> String {
    name.strip_prefix("r#").unwrap_or(name).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROMPT: &str = "/// Adds one.\nfn add_one(x: i64) -> i64 {\n";
    const TEST: &str = "\nfn main() {\n    let candidate = add_one;\n    assert_eq!(candidate(1), 2);\n}\n";

    fn escape(body: &str) -> Option<String> {
        completion_escape(PROMPT, body, TEST).unwrap()
    }

    #[test]
    fn honest_bodies_pass() {
        for body in [
            "    x + 1",
            "    let env = x; env + 1",
            "    let v: Vec<i64> = vec![x]; v.iter().map(|y| y + 1).sum()",
            "    use std::collections::HashMap;\n    let mut m = HashMap::new();\n    m.insert(1, x);\n    m[&1] + 1",
            "    use std::fmt::Write;\n    let mut s = String::new();\n    write!(s, \"{x}\").unwrap();\n    s.len() as i64 + x + 1 - s.len() as i64",
            "    #[inline]\n    fn inner(y: i64) -> i64 { y + 1 }\n    inner(x)",
            "    macro_rules! inc { ($e:expr) => { $e + 1 } }\n    inc!(x)",
            "    assert!(x < i64::MAX);\n    x + 1",
            "    println!(\"{x}\");\n    x + 1",
        ] {
            assert_eq!(escape(body), None, "{body}");
        }
    }

    #[test]
    fn bodies_that_leave_the_function_are_refused() {
        for body in [
            "    x + 1\n    }\nmacro_rules! assert_eq { ($($t:tt)*) => {} }\nfn pad() {",
            "    x + 1 } use std::dbg as assert_eq; fn pad() {",
            "    x + 1 }\nmod pad {",
            "    x + 1 }\ntrait Pad {",
        ] {
            let why = escape(body).unwrap_or_else(|| panic!("not refused: {body}"));
            assert!(why.contains("leaves its function"), "{why}");
        }
    }

    #[test]
    fn reaching_outside_the_program_is_refused() {
        for (body, what) in [
            ("    std::process::exit(0)", "module `process`"),
            ("    use std::process::exit; exit(0)", "module `process`"),
            ("    use std::{env, fs}; x + 1", "module `env`"),
            ("    use std::{collections::HashMap, process}; x + 1", "module `process`"),
            ("    let a: Vec<String> = std::env::args().collect(); x + a.len() as i64", "module `env`"),
            ("    use std::env as e; x + 1", "module `env`"),
            ("    let _ = std::fs::read(\"/proc/self/cmdline\"); x + 1", "module `fs`"),
            ("    unsafe { x + 1 }", "`unsafe`"),
            ("    extern \"C\" { fn exit(c: i32) -> !; } x + 1", "`extern`"),
            ("    include!(\"/etc/passwd\"); x + 1", "macro `include!`"),
            ("    let s = include_str!(\"/etc/passwd\"); x + s.len() as i64", "macro `include_str!`"),
            ("    #[no_mangle] fn f() {} x + 1", "attribute `#[no_mangle]`"),
            ("    #[export_name = \"main\"] fn f() {} x + 1", "attribute `#[export_name]`"),
            ("    std::r#process::exit(0)", "module `process`"),
            ("    { { std::process::abort() } }", "module `process`"),
        ] {
            let why = escape(body).unwrap_or_else(|| panic!("not refused: {body}"));
            assert!(why.contains(what), "{body}: {why}");
        }
    }

    #[test]
    fn unbalanced_bodies_and_bad_tasks() {
        // Balanced only together with the test's text: `/*` is closed nowhere in the test, so
        // the program does not parse and the compiler will reject it (not refused here).
        assert_eq!(escape("    x + 1 /*"), None);
        // A syntax error is the compiler's business.
        assert_eq!(escape("    let = ;"), None);
        // A broken prompt or test is an error of the task.
        assert!(completion_escape("fn f( {\n", "1", TEST).is_err());
        assert!(completion_escape(PROMPT, "x", "fn main( {").is_err());
        // A huge body is refused, not skipped.
        let huge = format!("    {}x", "0 + ".repeat(100_000));
        assert!(escape(&huge).unwrap().contains("too large"));
    }
}
