//! Function-level view of a Rust source file: its free functions, impl blocks
//! and the methods inside them, each as standalone text.
//!
//! Every [`ExtractedItem`] keeps the item's outer attributes and doc comments
//! and is *de-indented*: each line after the first loses as much leading
//! whitespace (spaces or tabs, up to the column where the item starts) as the
//! item's first line had before it, so a function nested in a module or an
//! impl block comes out with its closing brace at column 0. Lines inside a
//! multi-line string literal are never touched (their whitespace is part of
//! the value).
//!
//! Items are found at the top level of the file and inside inline modules
//! (`mod m { ... }`), not inside function bodies. Trait definitions, macros
//! and items produced by macros are not extracted.
//!
//! **Standalone candidates.** [`ExtractedItem::standalone`] is a conservative
//! guess that a free function type-checks on its own, in an otherwise empty
//! file with no `use` declarations: every path in its signature and body must
//! be a local binding, a generic parameter, an item or `use` declared inside
//! the function, the function itself, a primitive type, a name of the Rust
//! 2021 prelude, or a path rooted at `std` / `core` (`alloc` needs an
//! `extern crate`, so it does not count); `Self`, `crate`, `super` and `self`
//! paths disqualify, as do macros other than the standard ones, attributes
//! other than a small allowlist (`cfg` and `test` are excluded since they can
//! compile a function away) and `extern crate`. A name imported by a `use
//! std::...` / `use core::...` declaration of the function's own module (no
//! globs, no attributes) also counts; the declarations it needs are returned
//! in [`ExtractedItem::std_uses`]. Methods and impl blocks are
//! never standalone. The flag only picks candidates for `rustc`, which has the
//! last word.
//!
//! **Nontrivial bodies.** [`ExtractedItem::nontrivial`] is false when the body
//! is empty or invokes `todo!`, `unimplemented!`, `unreachable!` or `panic!`
//! anywhere (including inside other macros' arguments): such a body compiles
//! without doing the work, so it must not count as a real completion.
use std::collections::HashSet;

use proc_macro2::{LineColumn, Span, TokenStream, TokenTree};
use syn::visit::{self, Visit};

use crate::CheckError;

/// What an extracted item is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemKind {
    /// A free function (`fn` at module level).
    Function,
    /// A whole `impl` block.
    Impl,
    /// A function inside an `impl` block (with or without `self`).
    Method,
}

impl ItemKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ItemKind::Function => "function",
            ItemKind::Impl => "impl",
            ItemKind::Method => "method",
        }
    }
}

/// One item of the function-level view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtractedItem {
    pub kind: ItemKind,
    /// The function's name; for an impl block the last segment of its self
    /// type's path (empty when the type is not a path).
    pub name: String,
    /// Attributes, doc comments and the item, de-indented.
    pub text: String,
    /// Functions: from the visibility / `fn` keyword to the body's opening
    /// brace (exclusive), trimmed. Impl blocks: the header, `impl ... Type`.
    pub signature: String,
    /// The doc comment (`///`, `/** */`, `#[doc = "..."]`) with the common
    /// leading whitespace of its lines removed; empty when undocumented.
    pub doc: String,
    /// Text between the body's braces (exclusive), de-indented like `text`.
    pub body: String,
    /// For a method, the header of the impl block it belongs to.
    pub impl_header: Option<String>,
    /// See the module docs; always false for methods and impl blocks.
    pub standalone: bool,
    /// See the module docs.
    pub nontrivial: bool,
    /// For a standalone function, the `use std::...` / `use core::...`
    /// declarations of its module that it needs (visibility dropped, one per
    /// line): the names it refers to, and method-bearing traits such as
    /// `std::fmt::Write` or `std::io::Read`, which calls cannot reveal. Compile
    /// `std_uses` followed by `text`. Empty otherwise.
    pub std_uses: String,
    /// 1-based line of the item's first attribute or keyword.
    pub start_line: usize,
    /// 1-based line of the closing brace.
    pub end_line: usize,
}

/// Extracts the function-level view of `source`. Fails like
/// [`crate::parse_check`] (syntax errors, oversized or too deeply nested
/// sources); never panics on any input.
pub fn extract_items(source: &str) -> Result<Vec<ExtractedItem>, CheckError> {
    crate::with_parsed_tokens(source, |file, tokens| {
        let ctx = SourceText::new(source, tokens);
        let mut out = Vec::new();
        collect(&ctx, &file.items, &mut out);
        out
    })
}

/// The source with a line index, and the lines that must not be de-indented.
struct SourceText<'a> {
    src: &'a str,
    /// The lexer counts a leading byte-order mark as a column of line 1.
    bom: bool,
    line_starts: Vec<usize>,
    /// 1-based lines that continue a multi-line literal.
    protected: HashSet<usize>,
}

impl<'a> SourceText<'a> {
    fn new(src: &'a str, tokens: &TokenStream) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(src.match_indices('\n').map(|(i, _)| i + 1));
        let mut protected = HashSet::new();
        let mut pending = vec![tokens.clone()];
        while let Some(stream) = pending.pop() {
            for tree in stream {
                match tree {
                    TokenTree::Group(g) => pending.push(g.stream()),
                    TokenTree::Literal(lit) => {
                        let span = lit.span();
                        let (start, end) = (span.start().line, span.end().line);
                        protected.extend(start + 1..=end);
                    }
                    _ => {}
                }
            }
        }
        SourceText {
            src,
            bom: src.starts_with('\u{feff}'),
            line_starts,
            protected,
        }
    }

    /// Byte offset of a (1-based line, 0-based char column) position, clamped
    /// to the source.
    fn offset(&self, at: LineColumn) -> usize {
        let Some(&start) = self.line_starts.get(at.line.wrapping_sub(1)) else {
            return self.src.len();
        };
        let end = self
            .line_starts
            .get(at.line)
            .copied()
            .unwrap_or(self.src.len());
        let line = &self.src[start..end];
        line.char_indices()
            .nth(at.column)
            .map_or(end, |(i, _)| start + i)
    }

    /// The text from `from` to `to`, every line after the first stripped of up
    /// to `indent` leading spaces/tabs (protected lines kept as they are).
    /// How far an item starting at `at` is indented (its column, less a byte-order mark).
    fn indent(&self, at: LineColumn) -> usize {
        if at.line == 1 && self.bom {
            at.column.saturating_sub(1)
        } else {
            at.column
        }
    }

    fn dedented(&self, from: LineColumn, to: LineColumn, indent: usize) -> String {
        let (a, b) = (self.offset(from), self.offset(to));
        if a >= b {
            return String::new();
        }
        let mut out = String::with_capacity(b - a);
        for (i, line) in self.src[a..b].split_inclusive('\n').enumerate() {
            if i == 0 || self.protected.contains(&(from.line + i)) {
                out.push_str(line);
                continue;
            }
            let mut cut = 0;
            for (n, (bi, ch)) in line.char_indices().enumerate() {
                if n >= indent || !(ch == ' ' || ch == '\t') {
                    break;
                }
                cut = bi + ch.len_utf8();
            }
            out.push_str(&line[cut..]);
        }
        out
    }
}

fn before(a: LineColumn, b: LineColumn) -> bool {
    (a.line, a.column) < (b.line, b.column)
}

/// Start of an item: its first outer attribute or its first keyword.
fn item_start(attrs: &[syn::Attribute], keyword: Span) -> LineColumn {
    let mut start = keyword.start();
    for attr in attrs {
        if matches!(attr.style, syn::AttrStyle::Outer) {
            let s = attr.pound_token.span.start();
            if before(s, start) {
                start = s;
            }
        }
    }
    start
}

fn vis_span(vis: &syn::Visibility) -> Option<Span> {
    match vis {
        syn::Visibility::Public(t) => Some(t.span),
        syn::Visibility::Restricted(r) => Some(r.pub_token.span),
        syn::Visibility::Inherited => None,
    }
}

/// First keyword of a function item (`pub`, `default`, `const`, `async`, `unsafe`, `extern`, `fn`).
fn fn_keyword(vis: &syn::Visibility, default: Option<Span>, sig: &syn::Signature) -> Span {
    vis_span(vis)
        .or(default)
        .or(sig.constness.as_ref().map(|t| t.span))
        .or(sig.asyncness.as_ref().map(|t| t.span))
        .or(sig.unsafety.as_ref().map(|t| t.span))
        .or(sig.abi.as_ref().map(|a| a.extern_token.span))
        .unwrap_or(sig.fn_token.span)
}

fn doc_text(attrs: &[syn::Attribute]) -> String {
    let mut lines: Vec<String> = Vec::new();
    for attr in attrs {
        if !matches!(attr.style, syn::AttrStyle::Outer) || !attr.path().is_ident("doc") {
            continue;
        }
        if let syn::Meta::NameValue(nv) = &attr.meta {
            if let syn::Expr::Lit(syn::ExprLit {
                lit: syn::Lit::Str(s),
                ..
            }) = &nv.value
            {
                lines.extend(s.value().split('\n').map(str::to_owned));
            }
        }
    }
    let leading = |l: &str| l.chars().take_while(|c| c.is_whitespace()).count();
    let indent = lines
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| leading(l))
        .min()
        .unwrap_or(0);
    let stripped: Vec<&str> = lines
        .iter()
        .map(|l| {
            let cut = l.char_indices().nth(indent).map_or(l.len(), |(i, _)| i);
            l[cut..].trim_end()
        })
        .collect();
    stripped.join("\n").trim_matches('\n').to_owned()
}

fn collect(ctx: &SourceText<'_>, items: &[syn::Item], out: &mut Vec<ExtractedItem>) {
    let uses: Vec<StdUse> = items
        .iter()
        .filter_map(|item| match item {
            syn::Item::Use(u) => std_use(ctx, u),
            _ => None,
        })
        .collect();
    for item in items {
        match item {
            syn::Item::Fn(f) => {
                let keyword = fn_keyword(&f.vis, None, &f.sig);
                let mut extracted = function(
                    ctx,
                    &f.attrs,
                    keyword,
                    &f.sig,
                    &f.block,
                    ItemKind::Function,
                    None,
                );
                if let Some(needed) = standalone_uses(f, &uses) {
                    extracted.standalone = true;
                    extracted.std_uses = needed;
                }
                out.push(extracted);
            }
            syn::Item::Impl(imp) => impl_block(ctx, imp, out),
            syn::Item::Mod(m) => {
                if let Some((_, inner)) = &m.content {
                    collect(ctx, inner, out);
                }
            }
            _ => {}
        }
    }
}

fn function(
    ctx: &SourceText<'_>,
    attrs: &[syn::Attribute],
    keyword: Span,
    sig: &syn::Signature,
    block: &syn::Block,
    kind: ItemKind,
    impl_header: Option<String>,
) -> ExtractedItem {
    let start = item_start(attrs, keyword);
    let open = block.brace_token.span.open();
    let close = block.brace_token.span.close();
    let indent = ctx.indent(start);
    ExtractedItem {
        kind,
        name: sig.ident.to_string(),
        text: ctx.dedented(start, close.end(), indent),
        signature: ctx
            .dedented(keyword.start(), open.start(), indent)
            .trim()
            .to_owned(),
        doc: doc_text(attrs),
        body: ctx.dedented(open.end(), close.start(), indent),
        impl_header,
        standalone: false,
        nontrivial: is_nontrivial(block),
        std_uses: String::new(),
        start_line: start.line,
        end_line: close.end().line,
    }
}

fn impl_block(ctx: &SourceText<'_>, imp: &syn::ItemImpl, out: &mut Vec<ExtractedItem>) {
    let keyword = imp
        .defaultness
        .as_ref()
        .map(|t| t.span)
        .or(imp.unsafety.as_ref().map(|t| t.span))
        .unwrap_or(imp.impl_token.span);
    let start = item_start(&imp.attrs, keyword);
    let open = imp.brace_token.span.open();
    let close = imp.brace_token.span.close();
    let indent = ctx.indent(start);
    let header = ctx
        .dedented(keyword.start(), open.start(), indent)
        .trim()
        .to_owned();
    let name = match &*imp.self_ty {
        syn::Type::Path(p) => p
            .path
            .segments
            .last()
            .map(|s| s.ident.to_string())
            .unwrap_or_default(),
        _ => String::new(),
    };
    out.push(ExtractedItem {
        kind: ItemKind::Impl,
        name,
        text: ctx.dedented(start, close.end(), indent),
        signature: header.clone(),
        doc: doc_text(&imp.attrs),
        body: ctx.dedented(open.end(), close.start(), indent),
        impl_header: None,
        standalone: false,
        nontrivial: !imp.items.is_empty(),
        std_uses: String::new(),
        start_line: start.line,
        end_line: close.end().line,
    });
    for inner in &imp.items {
        if let syn::ImplItem::Fn(f) = inner {
            let keyword = fn_keyword(&f.vis, f.defaultness.as_ref().map(|t| t.span), &f.sig);
            out.push(function(
                ctx,
                &f.attrs,
                keyword,
                &f.sig,
                &f.block,
                ItemKind::Method,
                Some(header.clone()),
            ));
        }
    }
}

// --- nontrivial bodies ----------------------------------------------------------------------------

/// Macros whose use makes a body a stub.
const STUB_MACROS: [&str; 4] = ["todo", "unimplemented", "unreachable", "panic"];

/// True when the body has at least one statement and calls no stub macro.
pub fn is_nontrivial(block: &syn::Block) -> bool {
    if block.stmts.is_empty() {
        return false;
    }
    let mut finder = StubFinder { found: false };
    finder.visit_block(block);
    !finder.found
}

struct StubFinder {
    found: bool,
}

impl<'ast> Visit<'ast> for StubFinder {
    fn visit_macro(&mut self, mac: &'ast syn::Macro) {
        if mac
            .path
            .segments
            .last()
            .is_some_and(|s| STUB_MACROS.contains(&s.ident.to_string().as_str()))
            || tokens_call_stub(&mac.tokens)
        {
            self.found = true;
        }
    }
}

/// A stub macro invoked inside a macro's unparsed arguments: an identifier from
/// [`STUB_MACROS`] followed by `!`. Walks nested groups without recursion.
fn tokens_call_stub(tokens: &TokenStream) -> bool {
    let mut pending = vec![tokens.clone()];
    while let Some(stream) = pending.pop() {
        let mut previous_stub = false;
        for tree in stream {
            match &tree {
                TokenTree::Punct(p) if p.as_char() == '!' && previous_stub => return true,
                TokenTree::Group(g) => pending.push(g.stream()),
                _ => {}
            }
            previous_stub = matches!(&tree, TokenTree::Ident(i) if STUB_MACROS.contains(&i.to_string().as_str()));
        }
    }
    false
}

// --- standalone candidates ------------------------------------------------------------------------

const PRIMITIVES: [&str; 17] = [
    "bool", "char", "str", "u8", "u16", "u32", "u64", "u128", "usize", "i8", "i16", "i32", "i64",
    "i128", "isize", "f32", "f64",
];
/// Types and traits of the Rust 2021 prelude (usable as types, bounds and path roots).
const PRELUDE_TYPES: [&str; 32] = [
    "Option",
    "Result",
    "Vec",
    "String",
    "Box",
    "ToString",
    "ToOwned",
    "Clone",
    "Copy",
    "Send",
    "Sync",
    "Sized",
    "Unpin",
    "Drop",
    "Fn",
    "FnMut",
    "FnOnce",
    "Default",
    "Eq",
    "PartialEq",
    "Ord",
    "PartialOrd",
    "AsRef",
    "AsMut",
    "Into",
    "From",
    "Iterator",
    "Extend",
    "IntoIterator",
    "DoubleEndedIterator",
    "ExactSizeIterator",
    "TryFrom",
];
const PRELUDE_MORE: [&str; 7] = [
    "TryInto",
    "FromIterator",
    "Some",
    "None",
    "Ok",
    "Err",
    "drop",
];
/// Standard macros usable without imports (`include!`-like and `env!` are left out: they read the build environment).
const STD_MACROS: [&str; 29] = [
    "assert",
    "assert_eq",
    "assert_ne",
    "debug_assert",
    "debug_assert_eq",
    "debug_assert_ne",
    "column",
    "concat",
    "dbg",
    "eprint",
    "eprintln",
    "file",
    "format",
    "format_args",
    "line",
    "matches",
    "module_path",
    "panic",
    "print",
    "println",
    "stringify",
    "todo",
    "unimplemented",
    "unreachable",
    "vec",
    "write",
    "writeln",
    "macro_rules",
    "option_env",
];
/// Attributes a standalone function may carry (`cfg`, `cfg_attr` and `test` can compile it away).
const ALLOWED_ATTRS: [&str; 11] = [
    "doc",
    "inline",
    "must_use",
    "cold",
    "allow",
    "warn",
    "deny",
    "expect",
    "forbid",
    "track_caller",
    "deprecated",
];

fn attr_allowed(attr: &syn::Attribute) -> bool {
    let segments: Vec<String> = attr
        .path()
        .segments
        .iter()
        .map(|s| s.ident.to_string())
        .collect();
    match segments.as_slice() {
        [one] => ALLOWED_ATTRS.contains(&one.as_str()),
        [tool, ..] => tool == "rustfmt" || tool == "clippy",
        [] => false,
    }
}

/// What a function's signature and body refer to.
#[derive(Default)]
struct References {
    /// Names bound by patterns (parameters, lets, closures, match arms, ...).
    bound: HashSet<String>,
    /// Items, generic parameters and `use` names declared inside the function.
    local: HashSet<String>,
    /// (leading `::`, first segment, number of segments) of every path.
    paths: Vec<(bool, String, usize)>,
    /// Every macro invocation's path segments.
    macros: Vec<Vec<String>>,
    /// Something that can never compile alone (`extern crate`, `use crate::...`, `pub(super)`).
    foreign: bool,
}

impl References {
    fn use_tree(&mut self, tree: &syn::UseTree, root: bool) {
        match tree {
            syn::UseTree::Path(p) => {
                if root && !matches!(p.ident.to_string().as_str(), "std" | "core") {
                    self.foreign = true;
                }
                self.use_tree(&p.tree, false);
            }
            syn::UseTree::Name(n) => {
                if root {
                    self.foreign = true;
                }
                self.local.insert(n.ident.to_string());
            }
            syn::UseTree::Rename(r) => {
                if root {
                    self.foreign = true;
                }
                self.local.insert(r.rename.to_string());
            }
            // A glob brings in names we cannot list: `use std::collections::*;` then `HashMap` would be
            // rejected as unknown, which is the conservative side. `use crate::*` is foreign.
            syn::UseTree::Glob(_) => {
                if root {
                    self.foreign = true;
                }
            }
            syn::UseTree::Group(g) => {
                for t in &g.items {
                    self.use_tree(t, root);
                }
            }
        }
    }
}

impl<'ast> Visit<'ast> for References {
    fn visit_attribute(&mut self, _: &'ast syn::Attribute) {}

    fn visit_vis_restricted(&mut self, vis: &'ast syn::VisRestricted) {
        // `pub(crate)` and `pub(self)` are fine in a lone file; `pub(super)` / `pub(in path)` are not.
        if vis.in_token.is_some() || !(vis.path.is_ident("crate") || vis.path.is_ident("self")) {
            self.foreign = true;
        }
    }

    fn visit_pat_ident(&mut self, p: &'ast syn::PatIdent) {
        self.bound.insert(p.ident.to_string());
        visit::visit_pat_ident(self, p);
    }

    fn visit_type_param(&mut self, p: &'ast syn::TypeParam) {
        self.local.insert(p.ident.to_string());
        visit::visit_type_param(self, p);
    }

    fn visit_const_param(&mut self, p: &'ast syn::ConstParam) {
        self.local.insert(p.ident.to_string());
        visit::visit_const_param(self, p);
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        if let Some(first) = path.segments.first() {
            self.paths.push((
                path.leading_colon.is_some(),
                first.ident.to_string(),
                path.segments.len(),
            ));
        }
        visit::visit_path(self, path);
    }

    fn visit_macro(&mut self, mac: &'ast syn::Macro) {
        // Not visit::visit_macro: a macro's path is not a value or type path.
        self.macros.push(
            mac.path
                .segments
                .iter()
                .map(|s| s.ident.to_string())
                .collect(),
        );
    }

    fn visit_item(&mut self, item: &'ast syn::Item) {
        let name = match item {
            syn::Item::Const(i) => Some(&i.ident),
            syn::Item::Enum(i) => Some(&i.ident),
            syn::Item::Fn(i) => Some(&i.sig.ident),
            syn::Item::Static(i) => Some(&i.ident),
            syn::Item::Struct(i) => Some(&i.ident),
            syn::Item::Trait(i) => Some(&i.ident),
            syn::Item::Type(i) => Some(&i.ident),
            syn::Item::Union(i) => Some(&i.ident),
            syn::Item::Mod(i) => Some(&i.ident),
            syn::Item::Macro(i) => i.ident.as_ref(),
            syn::Item::Use(u) => {
                if u.leading_colon.is_some() {
                    self.foreign = true;
                }
                self.use_tree(&u.tree, true);
                None
            }
            syn::Item::ExternCrate(_) => {
                self.foreign = true;
                None
            }
            _ => None,
        };
        if let Some(name) = name {
            self.local.insert(name.to_string());
        }
        visit::visit_item(self, item);
    }
}

/// Traits whose methods need them in scope: a module importing one may rely on
/// it in method calls, which the extraction cannot resolve.
const METHOD_TRAITS: [&str; 10] = [
    "Write",
    "Read",
    "BufRead",
    "Seek",
    "Hash",
    "Hasher",
    "Borrow",
    "BorrowMut",
    "Any",
    "FromStr",
];

/// A module-level `use std::...` / `use core::...` declaration.
struct StdUse {
    /// `use ...;` as written (visibility and attributes dropped), de-indented.
    text: String,
    /// The names it brings into scope (`_` for `as _`).
    names: Vec<String>,
}

/// The declaration when it is a plain std/core import without globs or attributes.
fn std_use(ctx: &SourceText<'_>, u: &syn::ItemUse) -> Option<StdUse> {
    if !u.attrs.is_empty() {
        return None;
    }
    let syn::UseTree::Path(root) = &u.tree else {
        return None;
    };
    if !matches!(root.ident.to_string().as_str(), "std" | "core") {
        return None;
    }
    fn names(tree: &syn::UseTree, parent: &str, out: &mut Vec<String>) -> bool {
        match tree {
            syn::UseTree::Path(p) => names(&p.tree, &p.ident.to_string(), out),
            syn::UseTree::Name(n) if n.ident == "self" => {
                out.push(parent.to_owned());
                true
            }
            syn::UseTree::Name(n) => {
                out.push(n.ident.to_string());
                true
            }
            syn::UseTree::Rename(r) => {
                out.push(r.rename.to_string());
                true
            }
            syn::UseTree::Glob(_) => false,
            syn::UseTree::Group(g) => g.items.iter().all(|t| names(t, parent, out)),
        }
    }
    let mut found = Vec::new();
    if !names(&u.tree, "", &mut found) {
        return None;
    }
    let start = u.use_token.span.start();
    let text = ctx.dedented(start, u.semi_token.span.end(), ctx.indent(start));
    Some(StdUse { text, names: found })
}

/// See the module docs (no module imports counted).
pub fn is_standalone(f: &syn::ItemFn) -> bool {
    standalone_uses(f, &[]).is_some()
}

/// None when `f` is not standalone; else the `use` lines of `uses` it needs.
fn standalone_uses(f: &syn::ItemFn, uses: &[StdUse]) -> Option<String> {
    if f.sig.receiver().is_some() || f.sig.variadic.is_some() {
        return None;
    }
    if !f.attrs.iter().all(attr_allowed) {
        return None;
    }
    let mut refs = References::default();
    refs.local.insert(f.sig.ident.to_string());
    refs.visit_item_fn(f);
    if refs.foreign {
        return None;
    }
    let imported: HashSet<&str> = uses
        .iter()
        .flat_map(|u| u.names.iter().map(String::as_str))
        .collect();
    let mut used_imports: HashSet<&str> = HashSet::new();
    let known_root = |name: &str| {
        PRIMITIVES.contains(&name) || PRELUDE_TYPES.contains(&name) || PRELUDE_MORE.contains(&name)
    };
    let paths_ok = refs.paths.iter().all(|(leading, first, len)| {
        let first = first.as_str();
        if matches!(first, "std" | "core") {
            return true;
        }
        if *leading || matches!(first, "crate" | "super" | "self" | "Self") {
            return false;
        }
        if known_root(first)
            || refs.local.contains(first)
            || (*len == 1 && refs.bound.contains(first))
        {
            return true;
        }
        if let Some(name) = imported.get(first) {
            used_imports.insert(name);
            return true;
        }
        false
    });
    let macros_ok = refs
        .macros
        .iter()
        .all(|segments| match segments.as_slice() {
            [one] => STD_MACROS.contains(&one.as_str()) || refs.local.contains(one),
            [root, ..] => root == "std" || root == "core",
            [] => false,
        });
    if !(paths_ok && macros_ok) {
        return None;
    }
    let needed: Vec<&str> = uses
        .iter()
        .filter(|u| {
            u.names.iter().any(|n| {
                used_imports.contains(n.as_str()) || n == "_" || METHOD_TRAITS.contains(&n.as_str())
            })
        })
        .map(|u| u.text.as_str())
        .collect();
    Some(needed.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(src: &str, name: &str) -> ExtractedItem {
        let items = extract_items(src).unwrap();
        items
            .into_iter()
            .find(|i| i.name == name && i.kind != ItemKind::Impl)
            .unwrap_or_else(|| panic!("no item {name}"))
    }

    fn standalone(src: &str) -> bool {
        let items = extract_items(src).unwrap();
        assert_eq!(items.len(), 1, "{items:?}");
        items[0].standalone
    }

    #[test]
    fn function_in_module_is_deindented_with_docs_and_attributes() {
        let src = "mod m {\n    // not a doc comment\n    /// Adds one.\n    ///\n    ///   Indented.\n    #[inline]\n    pub fn add_one(x: i32) -> i32 {\n        x + 1\n    }\n}\n";
        let f = one(src, "add_one");
        assert_eq!(f.kind, ItemKind::Function);
        assert_eq!(
            f.text,
            "/// Adds one.\n///\n///   Indented.\n#[inline]\npub fn add_one(x: i32) -> i32 {\n    x + 1\n}"
        );
        assert_eq!(f.doc, "Adds one.\n\n  Indented.");
        assert_eq!(f.signature, "pub fn add_one(x: i32) -> i32");
        assert_eq!(f.body, "\n    x + 1\n");
        assert_eq!((f.start_line, f.end_line), (3, 9));
        assert!(f.standalone && f.nontrivial);
        assert_eq!(f.impl_header, None);
    }

    #[test]
    fn impl_blocks_and_methods() {
        let src = "struct S(u8);\n\n/// The impl.\nimpl<T> From<T> for S where T: Into<u8> {\n    fn from(t: T) -> Self {\n        S(t.into())\n    }\n}\n\nimpl S {\n    /// Makes one.\n    pub const fn new() -> Self {\n        S(0)\n    }\n\n    fn get(&self) -> u8 { self.0 }\n}\n";
        let items = extract_items(src).unwrap();
        let kinds: Vec<(ItemKind, &str)> =
            items.iter().map(|i| (i.kind, i.name.as_str())).collect();
        assert_eq!(
            kinds,
            vec![
                (ItemKind::Impl, "S"),
                (ItemKind::Method, "from"),
                (ItemKind::Impl, "S"),
                (ItemKind::Method, "new"),
                (ItemKind::Method, "get"),
            ]
        );
        assert_eq!(
            items[0].signature,
            "impl<T> From<T> for S where T: Into<u8>"
        );
        assert_eq!(items[0].doc, "The impl.");
        assert!(items[0].text.starts_with("/// The impl.\nimpl<T> From<T>"));
        assert!(items[0].text.ends_with("    }\n}"));
        assert_eq!(
            items[1].impl_header.as_deref(),
            Some("impl<T> From<T> for S where T: Into<u8>")
        );
        assert_eq!(items[1].text, "fn from(t: T) -> Self {\n    S(t.into())\n}");
        assert_eq!(
            items[3].text,
            "/// Makes one.\npub const fn new() -> Self {\n    S(0)\n}"
        );
        assert_eq!(items[3].signature, "pub const fn new() -> Self");
        assert_eq!(items[3].impl_header.as_deref(), Some("impl S"));
        assert_eq!(items[4].text, "fn get(&self) -> u8 { self.0 }");
        assert_eq!(items[4].body, " self.0 ");
        assert!(items.iter().all(|i| !i.standalone));
    }

    #[test]
    fn multiline_string_literal_lines_are_kept() {
        let src = "mod m {\n    pub fn s() -> &'static str {\n        let a = \"x\n    y\";\n        a\n    }\n}\n";
        let f = one(src, "s");
        assert_eq!(
            f.text,
            "pub fn s() -> &'static str {\n    let a = \"x\n    y\";\n    a\n}"
        );
    }

    #[test]
    fn tabs_and_multibyte_text_before_the_item() {
        let src = "mod m {\n\t/* é ü */ fn f() -> u8 {\n\t\t1\n\t}\n}\n";
        let f = one(src, "f");
        // The item starts at char column 11: the first line keeps nothing before `fn`,
        // later lines lose their (fewer) leading tabs.
        assert_eq!(f.text, "fn f() -> u8 {\n1\n}");
        let src = "mod m {\n\tfn g() {\n\t\tlet x = 'ü';\n\t}\n}\n";
        assert_eq!(one(src, "g").text, "fn g() {\n\tlet x = 'ü';\n}");
    }

    #[test]
    fn standalone_true_cases() {
        assert!(standalone(
            "fn gcd(a: u64, b: u64) -> u64 { if b == 0 { a } else { gcd(b, a % b) } }"
        ));
        assert!(standalone(
            "pub fn counts(s: &str) -> std::collections::HashMap<char, usize> {\n    let mut m = std::collections::HashMap::new();\n    for c in s.chars() { *m.entry(c).or_insert(0) += 1; }\n    m\n}"
        ));
        assert!(standalone(
            "fn largest<T: PartialOrd + Copy>(v: &[T]) -> Option<T> { v.iter().copied().fold(None, |acc, x| match acc { None => Some(x), Some(m) if x > m => Some(x), other => other }) }"
        ));
        assert!(standalone(
            "fn f(v: Vec<u8>) -> String {\n    use std::fmt::Write;\n    struct Local(u8);\n    fn helper(x: u8) -> Local { Local(x) }\n    let mut s = String::new();\n    for x in v { let l = helper(x); write!(s, \"{}\", l.0).unwrap(); }\n    s\n}"
        ));
        assert!(standalone("#[inline]\n#[must_use]\n#[allow(clippy::all)]\npub(crate) fn id(x: i32) -> i32 { i32::max(x, core::i32::MIN) }"));
        assert!(standalone("fn n<const N: usize>() -> [u8; N] { [0; N] }"));
    }

    #[test]
    fn standalone_false_cases() {
        let cases = [
            "fn f() -> Foo { Foo::new() }",
            "fn f(x: u8) -> u8 { helper(x) }",
            "fn f(x: u8) -> u8 { x + LIMIT }",
            "fn f<T: MyTrait>(t: T) {}",
            "fn f(t: impl std::fmt::Debug + Display) {}",
            "fn f() -> u8 { crate::x() }",
            "fn f() -> u8 { super::x() }",
            "fn f() -> u8 { ::other::x() }",
            "fn f() { let m: HashMap<u8, u8> = Default::default(); }",
            "fn f() -> alloc::vec::Vec<u8> { Vec::new() }",
            "fn f() { my_macro!(1); }",
            "fn f() { other::mac!(1); }",
            "fn f() { use crate::thing; thing(); }",
            "fn f() { use super::*; }",
            "fn f() { extern crate alloc; }",
            "#[cfg(feature = \"std\")]\nfn f() {}",
            "#[test]\nfn f() { assert!(true); }",
            "#[tokio::main]\nfn f() {}",
            "pub(super) fn f() {}",
            "fn f() -> Self { todo!() }",
        ];
        for src in cases {
            assert!(!standalone(src), "{src}");
        }
        // Methods are never standalone, even std-only ones.
        let items = extract_items("impl S { fn f(x: u8) -> u8 { x } }").unwrap();
        assert!(items.iter().all(|i| !i.standalone));
    }

    #[test]
    fn module_std_imports_make_standalone_with_their_use_lines() {
        let src = "use std::collections::HashMap;\nuse std::io::{self, Read};\npub use std::fmt::Write as _;\nuse crate::Thing;\nuse std::sync::*;\n#[cfg(unix)]\nuse std::os::unix::fs::MetadataExt;\n\npub fn counts(s: &str) -> HashMap<char, usize> {\n    let mut m = HashMap::new();\n    for c in s.chars() {\n        *m.entry(c).or_insert(0) += 1;\n    }\n    m\n}\n\nfn read_all(r: &mut dyn Read) -> io::Result<Vec<u8>> {\n    let mut v = Vec::new();\n    r.read_to_end(&mut v)?;\n    Ok(v)\n}\n\nfn plain(x: u8) -> u8 {\n    x\n}\n\nfn thing() -> Thing {\n    Thing\n}\n\nfn arc() -> Arc<u8> {\n    Arc::new(1)\n}\n\nfn meta(m: &std::fs::Metadata) -> u32 {\n    m.mode()\n}\n\nmod inner {\n    pub fn c() -> HashMap<u8, u8> {\n        HashMap::new()\n    }\n}\n";
        let items = extract_items(src).unwrap();
        let get = |name: &str| items.iter().find(|i| i.name == name).unwrap();
        // Trait imports (`Read`, `as _`) always come along: method calls cannot show they are needed.
        assert!(get("counts").standalone);
        assert_eq!(
            get("counts").std_uses,
            "use std::collections::HashMap;\nuse std::io::{self, Read};\nuse std::fmt::Write as _;"
        );
        assert!(get("read_all").standalone);
        assert_eq!(
            get("read_all").std_uses,
            "use std::io::{self, Read};\nuse std::fmt::Write as _;"
        );
        assert!(get("plain").standalone);
        assert_eq!(
            get("plain").std_uses,
            "use std::io::{self, Read};\nuse std::fmt::Write as _;"
        );
        assert!(!get("thing").standalone && get("thing").std_uses.is_empty());
        assert!(!get("arc").standalone, "glob imports are not followed");
        assert!(
            get("meta").standalone,
            "an unresolvable method is rustc's to judge"
        );
        assert!(
            !get("c").standalone,
            "a parent module's imports are not in scope"
        );
        // The flag without module imports.
        let file = syn::parse_file("fn f() -> HashMap<u8, u8> { HashMap::new() }").unwrap();
        let syn::Item::Fn(f) = &file.items[0] else {
            unreachable!()
        };
        assert!(!is_standalone(f));
    }

    #[test]
    fn nontrivial_bodies() {
        let nontrivial = |src: &str| extract_items(src).unwrap()[0].nontrivial;
        assert!(nontrivial("fn f() -> u8 { 1 }"));
        assert!(nontrivial("fn f(v: &[u8]) { println!(\"{v:?}\") }"));
        assert!(!nontrivial("fn f() {}"));
        assert!(!nontrivial("fn f() {\n    // nothing yet\n}"));
        assert!(!nontrivial("fn f() -> u8 { todo!() }"));
        assert!(!nontrivial("fn f() -> u8 { unimplemented!(\"later\") }"));
        assert!(!nontrivial(
            "fn f(x: u8) -> u8 { match x { 0 => 1, _ => unreachable!() } }"
        ));
        assert!(!nontrivial("fn f() -> u8 { std::panic!(\"no\") }"));
        assert!(!nontrivial("fn f() -> String { format!(\"{}\", todo!()) }"));
        assert!(!nontrivial("fn f() { let v = vec![1, { panic!() }]; }"));
        // A name that merely contains a stub macro's name is fine.
        assert!(nontrivial("fn f() -> u8 { let todo = 1; todo }"));
    }

    #[test]
    fn garbage_and_edge_inputs_never_panic() {
        assert_eq!(extract_items("").unwrap(), vec![]);
        assert_eq!(extract_items("struct S; const X: u8 = 1;").unwrap(), vec![]);
        assert!(matches!(
            extract_items("fn (").unwrap_err(),
            CheckError::Syntax { .. }
        ));
        assert!(matches!(
            extract_items("\u{0}\u{1}\u{7f}").unwrap_err(),
            CheckError::Syntax { .. }
        ));
        assert!(matches!(
            extract_items("}}}{{{").unwrap_err(),
            CheckError::Syntax { .. }
        ));
        let deep = format!("fn f() {{ {}0{} }}", "[".repeat(5_000), "]".repeat(5_000));
        assert!(matches!(
            extract_items(&deep).unwrap_err(),
            CheckError::TooDeep { .. }
        ));
        let big = "x".repeat(crate::MAX_SOURCE_BYTES + 1);
        assert!(matches!(
            extract_items(&big).unwrap_err(),
            CheckError::TooLarge { .. }
        ));
        // A byte-order mark, CRLF line ends and a one-line file.
        let f = one("\u{feff}fn a() -> u8 {\r\n    1\r\n}\r\n", "a");
        assert_eq!(f.text, "fn a() -> u8 {\r\n    1\r\n}");
        assert_eq!(one("fn b() { }", "b").body, " ");
        // Every prefix of a real file either parses or fails cleanly.
        let src = "/// d\nmod m {\n    impl<T> X<T> {\n        pub fn é(&self, s: &str) -> String {\n            let r = r#\"a\n  b\"#;\n            format!(\"{s}{r}\")\n        }\n    }\n}\n";
        for (end, _) in src.char_indices() {
            let _ = extract_items(&src[..end]);
        }
        let f = one(src, "é");
        assert_eq!(f.impl_header.as_deref(), Some("impl<T> X<T>"));
        assert_eq!(f.text, "pub fn é(&self, s: &str) -> String {\n    let r = r#\"a\n  b\"#;\n    format!(\"{s}{r}\")\n}");
    }
}
