//! The architecture as a test: which top-level module of the library may use which.
//!
//! Every `src/**/*.rs` file of the library is scanned for paths into the crate (`crate::x`,
//! grouped `use crate::{x, y}`, `super::` chains that climb out of the top-level module);
//! each edge between two top-level modules must be in [`ALLOWED`]. The table is the
//! architecture: change a row only on purpose, in review. There is no exceptions list.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// What each top-level module may use, bottom layer first; arrows point down and a row may
/// only name rows above it. A module may always use itself.
#[rustfmt::skip]
const ALLOWED: &[(&str, &[&str])] = &[
    // the pure codec: MQTT 3.1.1 and 5.0 packets to and from bytes, no I/O
    ("mqtt",    &[]),
    // the per-shard WAL: DMA segments, group commit, fsync policies, recovery
    ("storage", &[]),
    // topic ownership, topic/filter rules, the subscription trie, the interest table, the
    // few-entry map of the trie and of sessions
    ("router",  &[]),
    // who may connect and what they may do: API keys, users, topic ACLs
    ("auth",    &[]),
    // a client's session: subscriptions, queue, in-flight window, will, expiry; the link to
    // its connection (output, acks owed, what the client may receive under its ACL); its
    // replay cursors are per owner shard (router's ShardId)
    ("session", &["mqtt", "auth", "router"]),
    // settings: defaults < TOML file < env < CLI flags, and their validation
    ("config",  &["router", "storage"]),
    // per-shard single-writer probes, `/metrics` and `/health`
    ("metrics", &["storage"]),
    // process bootstrap (ports, rlimits), pinned executors, the generic mesh, timers, shutdown; no broker, no connections
    ("runtime", &["config", "metrics"]),
    // one Broker per shard: sessions, subscriptions, retained, shared groups, the log, routing
    ("broker",  &["runtime", "session", "router", "storage", "auth", "mqtt", "config", "metrics"]),
    // the protocol doors: listeners and connection tasks (door::mqtt, door::kafka)
    ("door",    &["broker", "runtime", "session", "router", "storage", "auth", "mqtt", "config", "metrics"]),
    // (hidden) the decoders' contract checks that the fuzz targets run (the MQTT codec,
    // WAL frames, Kafka requests as the door decodes them)
    ("fuzzing", &["mqtt", "storage", "door"]),
    // one shard wired together (runtime, broker and doors); what main.rs starts
    ("server",  &["door", "broker", "runtime", "session", "router", "storage", "auth", "mqtt", "config", "metrics"]),
];

/// Entries of `src/` that belong to the binaries, not to the library.
const BINARY_ENTRIES: &[&str] = &[
    "main.rs",
    "reload.rs",
    "admin_client.rs",
    "kafka_client.rs",
    "bin",
];

const HOW_TO_FIX: &str = "\
To fix an edge, move the code down: put what both sides need into the lower module (or let
the lower module own a trait the upper one implements). Change ALLOWED in
tests/architecture.rs only when the architecture itself changes, on purpose, in review.";

#[test]
fn modules_use_only_the_layers_below() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let problems = architecture_problems(&src);
    assert!(
        problems.is_empty(),
        "the library breaks the architecture of tests/architecture.rs:\n{}\n\n{HOW_TO_FIX}",
        problems.join("\n")
    );
}

fn architecture_problems(src: &Path) -> Vec<String> {
    let lib = fs::read_to_string(src.join("lib.rs")).expect("read src/lib.rs");
    let modules = declared_modules(&lib);
    let mut problems = Vec::new();
    for path in fs::read_dir(src)
        .expect("read src/")
        .map(|e| e.unwrap().path())
    {
        let entry = path.file_name().unwrap().to_string_lossy().into_owned();
        let is_module = path.is_dir() || entry.ends_with(".rs");
        let stem = entry.trim_end_matches(".rs");
        if is_module
            && entry != "lib.rs"
            && !BINARY_ENTRIES.contains(&entry.as_str())
            && !modules.contains(stem)
        {
            problems.push(format!(
                "src/{entry} is neither declared in lib.rs nor a binary file"
            ));
        }
    }
    problems.extend(table_problems(&modules));
    problems.extend(edge_problems(src, &modules));
    problems
}

/// Modules missing from the table, rows naming modules that no longer exist, and rows that
/// name a row below them (a cycle in the making).
fn table_problems(modules: &BTreeSet<String>) -> Vec<String> {
    let mut problems = Vec::new();
    for module in modules
        .iter()
        .filter(|m| !ALLOWED.iter().any(|(k, _)| k == m))
    {
        problems.push(format!("module `{module}` is not a row of ALLOWED"));
    }
    let mut named = BTreeSet::new();
    for (row, (module, uses)) in ALLOWED.iter().enumerate() {
        named.insert(*module);
        named.extend(uses.iter().copied());
        for used in uses
            .iter()
            .filter(|u| !ALLOWED[..row].iter().any(|(m, _)| m == *u))
        {
            problems.push(format!(
                "ALLOWED: `{module}` uses `{used}`, which is not a row above it"
            ));
        }
    }
    for gone in named.iter().filter(|m| !modules.contains(**m)) {
        problems.push(format!(
            "ALLOWED names `{gone}`, which is no module of the library"
        ));
    }
    problems
}

/// Each edge between two top-level modules that the table does not allow, with every place
/// it occurs. Edges of a module without a row are checked once it has one.
fn edge_problems(src: &Path, modules: &BTreeSet<String>) -> Vec<String> {
    let mut files = Vec::new();
    for module in modules {
        let module_path = [module.clone()];
        collect_rs(&src.join(format!("{module}.rs")), &module_path, &mut files);
        collect_rs(&src.join(module), &module_path, &mut files);
    }
    files.sort();
    let mut edges: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for (path, module_path) in files {
        let from = &module_path[0];
        let Some((_, uses)) = ALLOWED.iter().find(|(m, _)| m == from) else {
            continue;
        };
        let text = fs::read_to_string(&path).expect("read source file");
        for (to, line) in references(&text, &module_path) {
            let known = modules.contains(&to) || to == "*";
            if to != *from && known && !uses.contains(&to.as_str()) {
                let file = path.strip_prefix(src.parent().unwrap()).unwrap();
                let at = format!("{}:{line}", file.display());
                edges.entry((from.clone(), to)).or_default().push(at);
            }
        }
    }
    edges
        .into_iter()
        .map(|((from, to), at)| format!("{from} -> {to} is not allowed, at {}", at.join(", ")))
        .collect()
}

/// The top-level `mod name;` declarations of lib.rs.
fn declared_modules(lib: &str) -> BTreeSet<String> {
    let toks = tokens(&strip(lib));
    toks.windows(3)
        .filter_map(|w| match (&w[0].tok, &w[1].tok, &w[2].tok) {
            (Tok::Word(m), Tok::Word(name), Tok::Punct(';')) if m == "mod" => Some(name.clone()),
            _ => None,
        })
        .collect()
}

/// Each `.rs` file at or under `path`, with its module path (`src/broker/persist/mod.rs` is
/// `broker::persist`, `src/broker/persist/x.rs` is `broker::persist::x`).
fn collect_rs(path: &Path, module_path: &[String], out: &mut Vec<(PathBuf, Vec<String>)>) {
    if path.is_dir() {
        for child in fs::read_dir(path).expect("read module dir") {
            let child = child.unwrap().path();
            let stem = child.file_stem().unwrap().to_string_lossy().into_owned();
            let mut child_path = module_path.to_vec();
            if stem != "mod" {
                child_path.push(stem);
            }
            collect_rs(&child, &child_path, out);
        }
    } else if path.is_file() && path.extension().is_some_and(|e| e == "rs") {
        out.push((path.to_path_buf(), module_path.to_vec()));
    }
}

/// The top-level modules a file's text refers to, with the line of each reference.
/// `file_module` is the file's module path; inline `mod x { .. }` blocks extend it, so
/// `super::` resolves as the compiler does.
fn references(text: &str, file_module: &[String]) -> Vec<(String, usize)> {
    let toks = tokens(&strip(text));
    let word = |i: usize| match toks.get(i).map(|t| &t.tok) {
        Some(Tok::Word(w)) => Some(w.as_str()),
        _ => None,
    };
    let is = |i: usize, t: Tok| toks.get(i).is_some_and(|x| x.tok == t);
    let mut inline: Vec<(String, usize)> = Vec::new(); // inline module and its brace depth
    let mut depth = 0;
    let mut found = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        match (&toks[i].tok, word(i + 1)) {
            (Tok::Punct('{'), _) => depth += 1,
            (Tok::Punct('}'), _) => {
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
                depth = depth.saturating_sub(1);
            }
            (Tok::Word(m), Some(name)) if m == "mod" && is(i + 2, Tok::Punct('{')) => {
                inline.push((name.to_string(), depth + 1));
                i += 1;
            }
            (Tok::Word(w), _)
                if matches!(w.as_str(), "crate" | "super" | "self")
                    && is(i + 1, Tok::Sep)
                    && !(i > 0 && is(i - 1, Tok::Sep)) =>
            {
                // A path's start: resolve its prefix to a module, then see what follows.
                let mut base: Vec<&str> = file_module.iter().map(String::as_str).collect();
                base.extend(inline.iter().map(|(m, _)| m.as_str()));
                if w == "crate" {
                    base.clear();
                }
                if w != "super" {
                    i += 2; // `super` pops below, with the rest of the chain
                }
                while word(i) == Some("super") && is(i + 1, Tok::Sep) {
                    base.pop();
                    i += 2;
                }
                if base.is_empty() {
                    found.extend(first_segments(&toks[i..]));
                }
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    found
}

/// The first segment(s) of the path that starts at `toks[0]`: one word, or the items of a
/// group `{a::X, b, {c, d}}` (not `self`); `*` for a glob of the crate root, which would
/// bring every module into scope unseen.
fn first_segments(toks: &[Token]) -> Vec<(String, usize)> {
    let mut found = Vec::new();
    let mut firsts: Vec<bool> = Vec::new(); // per open brace: are its items first segments?
    let mut item_start = true;
    for t in toks {
        let first = item_start && firsts.last().copied().unwrap_or(true);
        match &t.tok {
            Tok::Punct('{') => {
                firsts.push(first);
                continue;
            }
            Tok::Punct('}') => {
                firsts.pop();
            }
            Tok::Punct(',') => {
                item_start = true;
                continue;
            }
            Tok::Word(w) if first && w != "self" => found.push((w.clone(), t.line)),
            Tok::Punct('*') if first => found.push(("*".to_string(), t.line)),
            _ => {}
        }
        if firsts.is_empty() {
            break;
        }
        item_start = false;
    }
    found
}

#[derive(Debug, PartialEq)]
enum Tok {
    Word(String),
    /// `::`
    Sep,
    Punct(char),
}

#[derive(Debug)]
struct Token {
    tok: Tok,
    line: usize,
}

/// Words, `::` and single punctuation of stripped source, each with its 1-based line.
fn tokens(stripped: &str) -> Vec<Token> {
    let s: Vec<char> = stripped.chars().collect();
    let (mut toks, mut line, mut i) = (Vec::new(), 1, 0);
    while i < s.len() {
        let start = i;
        let tok = if is_word_char(s[i]) {
            while i < s.len() && is_word_char(s[i]) {
                i += 1;
            }
            Tok::Word(s[start..i].iter().collect())
        } else if s[i] == ':' && s.get(i + 1) == Some(&':') {
            i += 2;
            Tok::Sep
        } else {
            line += usize::from(s[i] == '\n');
            i += 1;
            if s[start].is_whitespace() {
                continue;
            }
            Tok::Punct(s[start])
        };
        toks.push(Token { tok, line });
    }
    toks
}

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// The source with comments (line, nested block, doc) and string, raw-string and char
/// literals blanked to spaces; newlines are kept so lines still count. Lifetimes stay.
fn strip(src: &str) -> String {
    let s: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let blank = |out: &mut String, chars: &[char]| {
        out.extend(chars.iter().map(|&c| if c == '\n' { '\n' } else { ' ' }));
    };
    let at = |i: usize, pat: &str| {
        pat.chars()
            .enumerate()
            .all(|(k, c)| s.get(i + k) == Some(&c))
    };
    let mut i = 0;
    while i < s.len() {
        let start = i;
        if at(i, "//") {
            while i < s.len() && s[i] != '\n' {
                i += 1;
            }
        } else if at(i, "/*") {
            let mut nesting = 0;
            while i < s.len() {
                if at(i, "/*") || at(i, "*/") {
                    nesting += if s[i] == '/' { 1 } else { -1 };
                    i += 2;
                    if nesting == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if s[i] == '"' {
            i += 1;
            while i < s.len() && s[i] != '"' {
                i += if s[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
        } else if s[i] == '\'' && s.get(i + 1) == Some(&'\\') {
            // An escaped char literal: '\n', '\'', '\u{1F600}'.
            i += 3;
            while i < s.len() && s[i] != '\'' {
                i += 1;
            }
            i += 1;
        } else if s[i] == '\'' && s.get(i + 2) == Some(&'\'') {
            // A char literal 'x'; a quote without a closing one is a lifetime or label.
            i += 3;
        } else if is_word_char(s[i]) {
            while i < s.len() && is_word_char(s[i]) {
                i += 1;
            }
            let word: String = s[start..i].iter().collect();
            out.push_str(&word);
            let hashes = s[i..].iter().take_while(|&&c| c == '#').count();
            if matches!(word.as_str(), "r" | "br" | "cr") && s.get(i + hashes) == Some(&'"') {
                // A raw string: it ends at a quote followed by as many hashes.
                let end = format!("\"{}", "#".repeat(hashes));
                let body = i;
                i += hashes + 1;
                while i < s.len() && !at(i, &end) {
                    i += 1;
                }
                i = (i + end.len()).min(s.len());
                blank(&mut out, &s[body..i]);
            }
            continue;
        } else {
            out.push(s[i]);
            i += 1;
            continue;
        }
        i = i.min(s.len());
        blank(&mut out, &s[start..i]);
    }
    out
}

mod parser_tests {
    use super::*;

    fn refs(src: &str, module: &[&str]) -> Vec<(String, usize)> {
        let module: Vec<String> = module.iter().map(|m| m.to_string()).collect();
        references(src, &module)
    }

    fn targets(src: &str, module: &[&str]) -> Vec<String> {
        refs(src, module).into_iter().map(|(t, _)| t).collect()
    }

    #[test]
    fn plain_and_grouped_use() {
        assert_eq!(targets("use crate::net::Conn;", &["broker"]), ["net"]);
        let grouped = "use crate::{net::X, shard};";
        assert_eq!(targets(grouped, &["broker"]), ["net", "shard"]);
        let nested = r"use crate::{
            a::{b::{C, D}, e},
            self,
            f as g,
            {h, i::J},
        };";
        assert_eq!(targets(nested, &["m"]), ["a", "f", "h", "i"]);
        assert_eq!(refs(nested, &["m"])[1], ("f".to_string(), 4));
        assert_eq!(targets("use {crate::a, crate::b::C};", &["m"]), ["a", "b"]);
        assert_eq!(
            targets("use super::*; use crate::{*, c};", &["m"]),
            ["*", "*", "c"]
        );
    }

    #[test]
    fn inline_paths_in_expressions_types_and_attributes() {
        let src = r"fn f(x: crate::a::T) -> Vec<crate::b::U> {
            crate::c::g(&x)
        }
        #[cfg_attr(test, derive(crate::d::Z))]
        macro_rules! m { () => { $crate::e::h() } }";
        assert_eq!(targets(src, &["m"]), ["a", "b", "c", "d", "e"]);
        assert_eq!(refs(src, &["m"])[2], ("c".to_string(), 2));
    }

    #[test]
    fn visibilities_are_not_paths() {
        let src = "pub(crate) fn f() {}\npub(super) struct S;\npub(in crate::m) fn g() {}";
        assert_eq!(targets(src, &["m", "x"]), ["m"]);
        assert!(targets("pub(crate) use self::x::Y;", &["m"]).is_empty());
    }

    #[test]
    fn super_chains_resolve_against_the_module_path() {
        let file = ["broker", "persist", "x"];
        assert_eq!(targets("use super::super::super::net::C;", &file), ["net"]);
        assert!(targets("use super::super::Reply; super::y::f();", &file).is_empty());
        let grouped = "use super::{net, shard::S};";
        assert_eq!(targets(grouped, &["broker"]), ["net", "shard"]);
        assert_eq!(targets("use self::super::net;", &["broker"]), ["net"]);
        // An inline module adds a level until its brace closes.
        let inline = r"#[cfg(test)]
        mod tests {
            use super::super::filter_matches;
        }
        use super::super::net::X;";
        assert_eq!(refs(inline, &["router", "trie"]), [("net".to_string(), 5)]);
        let climbs = "mod tests {\n    mod deep { use super::super::super::net::X; }\n}";
        assert_eq!(refs(climbs, &["broker"]), [("net".to_string(), 2)]);
    }

    #[test]
    fn comments_and_strings_do_not_count() {
        let src = r#"//! see crate::a
        /// and crate::b
        // crate::c
        /* crate::d /* nested crate::e */ crate::f */
        #[doc = "crate::g"]
        let s = "crate::h \" crate::i";
        let c = '"'; let q = '\''; crate::real::x();"#;
        assert_eq!(refs(src, &["m"]), [("real".to_string(), 7)]);
    }

    #[test]
    fn raw_strings_are_blanked() {
        let src = r###"let a = r"crate::a";
        let b = r#"crate::b " crate::c"#;
        let c = br##""#crate::d"##;
        let r#type = 1; crate::real::y();"###;
        assert_eq!(refs(src, &["m"]), [("real".to_string(), 4)]);
    }

    #[test]
    fn lifetimes_are_not_char_literals() {
        let src = r"fn f<'a, 'b>(x: &'a str, y: &'b crate::a::T) -> &'a str {
            'outer: loop { break 'outer; }
            let c = 'x'; crate::b::g(c, b'y', '\n', '\u{1F600}', '{')
        }";
        let expected = [("a".to_string(), 1), ("b".to_string(), 3)];
        assert_eq!(refs(src, &["m"]), expected);
        assert_eq!(strip("'a' '{'"), "       ");
        assert_eq!(strip("&'a T"), "&'a T");
    }

    #[test]
    fn lib_declarations_are_the_modules() {
        let lib = "//! mod docs;\n#[doc(hidden)]\npub mod fuzzing;\nmod net;\nmod t { }";
        let expected: BTreeSet<String> = ["fuzzing", "net"].map(String::from).into();
        assert_eq!(declared_modules(lib), expected);
    }
}
