//! The docs name things the code defines; these tests check that the names exist.
//!
//! * Every error code `docs/protocol.md` names (its error-code tables, and `error <code>` in
//!   inline code) is a code `ErrorCode` decodes, and every `ErrorCode` is in the §9 table.
//! * Every `prodserver` command (and its sub-command and flags) that `docs/operations.md` shows
//!   exists in `prodserver --help`, and every `gossipd` flag it shows exists in `gossipd --help`.
//!
//! The names are taken from the docs and checked against the code's own parsers and `--help`
//! output; no list of names is repeated here.

use std::collections::{BTreeSet, HashMap};
use std::process::Command;

use gossip_common::ErrorCode;
use gossip_tests::bin_path;

// ---------------------------------------------------------------------------------------------
// Reading Markdown (just enough of it).

fn read_repo_file(relative: &str) -> String {
    let path = format!("{}/../{relative}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}

fn is_fence(line: &str) -> bool {
    line.trim_start().starts_with("```")
}

/// The text outside fenced code blocks, as blocks separated by blank lines (so that an
/// unbalanced backtick cannot shift the pairing of inline code for the rest of the file).
fn prose_blocks(doc: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut block = String::new();
    let mut in_fence = false;
    for line in doc.lines() {
        if is_fence(line) {
            in_fence = !in_fence;
            continue;
        }
        if in_fence {
            continue;
        }
        if line.trim().is_empty() {
            if !block.is_empty() {
                blocks.push(std::mem::take(&mut block));
            }
        } else {
            block.push_str(line);
            block.push('\n');
        }
    }
    if !block.is_empty() {
        blocks.push(block);
    }
    blocks
}

/// The lines inside fenced code blocks, with shell continuations (`\` at the end) joined.
fn fenced_lines(doc: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut in_fence = false;
    let mut pending = String::new();
    for line in doc.lines() {
        if is_fence(line) {
            in_fence = !in_fence;
            continue;
        }
        if !in_fence {
            continue;
        }
        match line.trim_end().strip_suffix('\\') {
            Some(start) => {
                pending.push_str(start);
                pending.push(' ');
            }
            None => {
                pending.push_str(line);
                lines.push(std::mem::take(&mut pending));
            }
        }
    }
    lines
}

/// The contents of the inline code spans (`like this`) in `text`.
fn code_spans(text: &str) -> Vec<&str> {
    text.split('`').skip(1).step_by(2).collect()
}

/// One Markdown table: the header's cells and the body rows' cells, trimmed.
struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// Index of the first header cell for which `wanted` is true.
    fn column(&self, wanted: impl Fn(&str) -> bool) -> Option<usize> {
        self.header.iter().position(|h| wanted(h.as_str()))
    }

    /// The cells of column `i` (rows too short to have one are skipped).
    fn cells(&self, i: usize) -> impl Iterator<Item = &str> {
        self.rows
            .iter()
            .filter_map(move |r| r.get(i).map(String::as_str))
    }
}

/// Splits a table row at the `|` that are not inside inline code (`a|b` is one cell).
fn row_cells(line: &str) -> Vec<String> {
    let mut cells = Vec::new();
    let mut cell = String::new();
    let mut in_code = false;
    for c in line.trim().chars() {
        match c {
            '`' => {
                in_code = !in_code;
                cell.push(c);
            }
            '|' if !in_code => cells.push(std::mem::take(&mut cell).trim().to_owned()),
            _ => cell.push(c),
        }
    }
    cells.push(cell.trim().to_owned());
    // `| a | b |` has an empty piece before the first bar and after the last.
    if cells.first().is_some_and(|c| c.is_empty()) {
        cells.remove(0);
    }
    if cells.last().is_some_and(|c| c.is_empty()) {
        cells.pop();
    }
    cells
}

fn is_separator(cells: &[String]) -> bool {
    !cells.is_empty()
        && cells
            .iter()
            .all(|c| !c.is_empty() && c.chars().all(|ch| matches!(ch, '-' | ':' | ' ')))
}

/// Every table outside fenced code blocks.
fn tables(doc: &str) -> Vec<Table> {
    fn finish(rows: &mut Vec<Vec<String>>, out: &mut Vec<Table>) {
        let mut it = std::mem::take(rows).into_iter();
        if let Some(header) = it.next() {
            let rows: Vec<Vec<String>> = it.filter(|r| !is_separator(r)).collect();
            if !rows.is_empty() {
                out.push(Table { header, rows });
            }
        }
    }
    let mut out = Vec::new();
    let mut rows = Vec::new();
    let mut in_fence = false;
    for line in doc.lines() {
        if is_fence(line) {
            in_fence = !in_fence;
        }
        if !in_fence && line.trim_start().starts_with('|') {
            rows.push(row_cells(line));
        } else {
            finish(&mut rows, &mut out);
        }
    }
    finish(&mut rows, &mut out);
    out
}

/// A name the way the code spells error codes and commands: lowercase words joined by `-`.
fn is_kebab(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

// ---------------------------------------------------------------------------------------------
// Error codes in docs/protocol.md.

/// What `code` decodes to: the `ErrorCode` wire name, parsed by the type's own `Deserialize`
/// (kebab-case; a name it does not know becomes `Other`).
fn decode_code(code: &str) -> ErrorCode {
    serde_json::from_value(serde_json::Value::String(code.to_owned())).unwrap_or(ErrorCode::Other)
}

/// `CamelCase` → `camel-case`, serde's `rename_all = "kebab-case"` rule. Only used to name the
/// variants read from the source; the result is checked against `ErrorCode`'s own serialiser.
fn kebab_case(ident: &str) -> String {
    let mut out = String::new();
    for (i, c) in ident.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('-');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// The variants of `ErrorCode`, read from its definition in `common/src/message/error.rs` (the enum is
/// `#[non_exhaustive]` and has no list of its variants at run time).
fn error_code_variants() -> Vec<String> {
    let src = read_repo_file("common/src/message/error.rs");
    let body = src
        .split("pub enum ErrorCode {")
        .nth(1)
        .and_then(|rest| rest.split("\n}").next())
        .expect("`pub enum ErrorCode {` … `}` not found in common/src/message/error.rs");
    body.lines()
        .map(str::trim)
        .filter_map(|l| l.strip_suffix(','))
        .filter(|l| {
            l.starts_with(|c: char| c.is_ascii_uppercase())
                && l.chars().all(|c| c.is_ascii_alphanumeric())
        })
        .map(str::to_owned)
        .collect()
}

/// The codes protocol.md lists in its error-code table (§9, the table whose header starts
/// with `Code`).
fn codes_in_error_table(doc: &str) -> BTreeSet<String> {
    let mut codes = BTreeSet::new();
    for t in tables(doc) {
        if let Some(i) = t.column(|h| h.eq_ignore_ascii_case("code")) {
            for cell in t.cells(i) {
                codes.extend(code_spans(cell).into_iter().map(str::to_owned));
            }
        }
    }
    codes
}

/// Every code protocol.md names: the error-code table, the "`error` code sent" column of the
/// decoding-errors table (§2.3), and inline code of the form `error <code>`.
fn codes_named(doc: &str) -> BTreeSet<String> {
    let mut codes = codes_in_error_table(doc);
    for t in tables(doc) {
        if let Some(i) = t.column(|h| h.contains("code sent")) {
            for cell in t.cells(i) {
                codes.extend(code_spans(cell).into_iter().map(str::to_owned));
            }
        }
    }
    for block in prose_blocks(doc) {
        for span in code_spans(&block) {
            let mut words = span.split_whitespace();
            if let (Some("error"), Some(code)) = (words.next(), words.next()) {
                codes.insert(code.to_owned());
            }
        }
    }
    codes
}

#[test]
fn every_error_code_in_protocol_md_exists_in_error_code() {
    let doc = read_repo_file("docs/protocol.md");
    let codes = codes_named(&doc);
    assert!(
        codes.len() >= 5,
        "found only {codes:?} in docs/protocol.md: has the error-code table's layout changed?"
    );
    let unknown: Vec<&String> = codes
        .iter()
        .filter(|c| !is_kebab(c.as_str()) || decode_code(c.as_str()) == ErrorCode::Other)
        .collect();
    assert!(
        unknown.is_empty(),
        "docs/protocol.md names error codes that ErrorCode does not have: {unknown:?}"
    );
}

#[test]
fn every_error_code_variant_is_in_the_protocol_md_table() {
    let variants = error_code_variants();
    assert!(
        variants.len() >= 5,
        "read only {variants:?} as ErrorCode variants from common/src/message/error.rs: has its \
         layout changed?"
    );
    let table = codes_in_error_table(&read_repo_file("docs/protocol.md"));
    let mut missing = Vec::new();
    for ident in &variants {
        if ident == "Other" {
            // The catch-all for codes of newer revisions; the table describes it in prose.
            continue;
        }
        let name = kebab_case(ident);
        let code = decode_code(&name);
        assert_ne!(
            code,
            ErrorCode::Other,
            "ErrorCode::{ident} does not decode from {name:?}: update kebab_case() in this test"
        );
        let wire = serde_json::to_value(code).expect("ErrorCode serialises");
        assert_eq!(
            wire,
            serde_json::Value::String(name.clone()),
            "ErrorCode::{ident} is not sent as {name:?}: update kebab_case() in this test"
        );
        if !table.contains(&name) {
            missing.push(name);
        }
    }
    assert!(
        missing.is_empty(),
        "ErrorCode variants missing from the error-code table of docs/protocol.md (§9): {missing:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Commands and flags in docs/operations.md.

/// `--help` output of a workspace binary, with `args` before `--help`; cached per command line.
struct Helps(HashMap<Vec<String>, String>);

impl Helps {
    fn get(&mut self, bin: &str, args: &[&str]) -> &str {
        let mut key = vec![bin.to_owned()];
        key.extend(args.iter().map(|a| (*a).to_owned()));
        self.0.entry(key).or_insert_with(|| {
            let out = Command::new(bin_path(bin))
                .args(args)
                .arg("--help")
                .env("NO_COLOR", "1")
                .env_remove("CLICOLOR_FORCE")
                .output()
                .unwrap_or_else(|e| panic!("cannot run {bin}: {e}"));
            assert!(
                out.status.success(),
                "`{bin} {} --help` failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).expect("--help output is UTF-8")
        })
    }
}

/// The sub-commands a clap `--help` lists under `Commands:`.
fn commands_in(help: &str) -> BTreeSet<String> {
    help.lines()
        .skip_while(|l| l.trim_end() != "Commands:")
        .skip(1)
        .take_while(|l| l.is_empty() || l.starts_with(' '))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// Whether `help` mentions `flag` (`--peer`, `-p`) as a whole word.
fn mentions_flag(help: &str, flag: &str) -> bool {
    help.match_indices(flag).any(|(at, _)| {
        let starts_word = match help[..at].chars().next_back() {
            None => true,
            Some(c) => c.is_whitespace() || matches!(c, ',' | '[' | '('),
        };
        let ends_word = match help[at + flag.len()..].chars().next() {
            None => true,
            Some(c) => !(c.is_ascii_alphanumeric() || c == '-' || c == '_'),
        };
        starts_word && ends_word
    })
}

/// `--flag=value`, `--flag,` … → `--flag`; `None` if `token` is not a flag.
fn flag_of(token: &str) -> Option<&str> {
    let name = token.trim_start_matches('-');
    let dashes = token.len() - name.len();
    let end = name
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .unwrap_or(name.len());
    (matches!(dashes, 1 | 2) && end > 0).then(|| &token[..dashes + end])
}

/// For every place `program` is invoked in `text` (a code span or a line of a code block): the
/// words that follow it, up to the end of that shell command.
fn invocations<'a>(text: &'a str, program: &str) -> Vec<Vec<&'a str>> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let mut found = Vec::new();
    for (i, w) in words.iter().enumerate() {
        if *w == program || w.ends_with(&format!("/{program}")) {
            found.push(
                words[i + 1..]
                    .iter()
                    .copied()
                    .take_while(|w| !matches!(*w, "|" | ";" | "&&" | "||" | "#" | ">" | "<"))
                    .collect(),
            );
        }
    }
    found
}

/// Every piece of code operations.md shows: inline code spans and lines of code blocks.
fn code_pieces(doc: &str) -> Vec<String> {
    let mut pieces: Vec<String> = prose_blocks(doc)
        .iter()
        .flat_map(|b| {
            code_spans(b)
                .into_iter()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect();
    pieces.extend(fenced_lines(doc));
    pieces
}

#[test]
fn every_prodserver_command_in_operations_md_exists() {
    let doc = read_repo_file("docs/operations.md");
    // (words after `prodserver`, where the doc shows them)
    let mut uses: Vec<(Vec<String>, String)> = Vec::new();
    for piece in code_pieces(&doc) {
        for words in invocations(&piece, "prodserver") {
            uses.push((
                words.iter().map(|w| (*w).to_owned()).collect(),
                piece.clone(),
            ));
        }
    }
    // The command tables name commands without the `prodserver` in front.
    for t in tables(&doc) {
        if let Some(i) = t.column(|h| h == "command" || h == "commands") {
            for cell in t.cells(i) {
                for span in code_spans(cell) {
                    let words: Vec<String> = span.split_whitespace().map(str::to_owned).collect();
                    uses.push((words, format!("table cell `{span}`")));
                }
            }
        }
    }
    assert!(
        uses.len() >= 5,
        "found only {uses:?} prodserver commands in docs/operations.md: has its layout changed?"
    );

    let mut helps = Helps(HashMap::new());
    let top = helps.get("prodserver", &[]).to_owned();
    let commands = commands_in(&top);
    assert!(
        !commands.is_empty(),
        "no `Commands:` section in `prodserver --help`:\n{top}"
    );
    let mut problems = Vec::new();
    for (words, place) in &uses {
        let Some(cmd) = words.first().filter(|w| is_kebab(w.as_str())) else {
            continue; // `prodserver` alone, or a placeholder such as `<command>`
        };
        if !commands.contains(cmd) {
            problems.push(format!(
                "`prodserver {cmd}` ({place}) is not in `prodserver --help` (commands: {commands:?})"
            ));
            continue;
        }
        let help = helps.get("prodserver", &[cmd.as_str()]).to_owned();
        let subcommands = commands_in(&help);
        if let Some(second) = words.get(1) {
            if !subcommands.is_empty() && second.split('|').all(is_kebab) {
                for sub in second.split('|') {
                    if !subcommands.contains(sub) {
                        problems.push(format!(
                            "`prodserver {cmd} {sub}` ({place}) is not in `prodserver {cmd} \
                             --help` (commands: {subcommands:?})"
                        ));
                    }
                }
            }
        }
        for flag in words.iter().skip(1).filter_map(|w| flag_of(w)) {
            if !mentions_flag(&help, flag) && !mentions_flag(&top, flag) {
                problems.push(format!(
                    "`prodserver {cmd} {flag}` ({place}): {flag} is in neither `prodserver {cmd} \
                     --help` nor `prodserver --help`"
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "docs/operations.md shows prodserver commands that do not exist:\n{}",
        problems.join("\n")
    );
}

#[test]
fn every_gossipd_flag_in_operations_md_exists() {
    let doc = read_repo_file("docs/operations.md");
    // (flag, where the doc shows it)
    let mut flags: Vec<(String, String)> = Vec::new();
    for piece in code_pieces(&doc) {
        for words in invocations(&piece, "gossipd") {
            for flag in words.iter().filter_map(|w| flag_of(w)) {
                flags.push((flag.to_owned(), piece.clone()));
            }
        }
    }
    // The configuration reference names each setting's flag in its `flag` column.
    for t in tables(&doc) {
        if let Some(i) = t.column(|h| h == "flag") {
            for cell in t.cells(i) {
                for span in code_spans(cell) {
                    if let Some(flag) = span.split_whitespace().next().and_then(flag_of) {
                        flags.push((flag.to_owned(), format!("configuration table: `{span}`")));
                    }
                }
            }
        }
    }
    assert!(
        flags.len() >= 5,
        "found only {flags:?} gossipd flags in docs/operations.md: has its layout changed?"
    );

    let mut helps = Helps(HashMap::new());
    let help = helps.get("gossipd", &[]);
    let missing: Vec<String> = flags
        .iter()
        .filter(|(flag, _)| !mentions_flag(help, flag.as_str()))
        .map(|(flag, place)| format!("{flag} (in {place})"))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/operations.md shows gossipd flags that `gossipd --help` does not list:\n{}",
        missing.join("\n")
    );
}

/// The README's performance summary quotes `docs/performance.md`; a figure that is not there any
/// more (re-measured, or rounded differently) fails here instead of drifting.
#[test]
fn every_figure_in_the_readme_summary_is_in_performance_md() {
    let readme = read_repo_file("README.md");
    let perf = read_repo_file("docs/performance.md");
    let start = readme
        .find("In short")
        .expect("the README's performance summary");
    let summary = &readme[start..];
    let summary = &summary[..summary.find("\n\n").unwrap_or(summary.len())];
    let units = ["KiB", "logins/s", "pushes/s", "ms", "records/s", "µs", "%"];
    let words: Vec<&str> = summary.split_whitespace().collect();
    let mut figures = Vec::new();
    for pair in words.windows(2) {
        let unit = pair[1].trim_end_matches([',', '.', ')']);
        let number = pair[0].trim_start_matches(['≈', '+', '(']);
        if units.contains(&unit) && number.starts_with(|c: char| c.is_ascii_digit()) {
            figures.push(number.to_owned());
        }
    }
    assert!(
        figures.len() >= 7,
        "the summary's figures were not found: {figures:?}"
    );
    let missing: Vec<&String> = figures
        .iter()
        .filter(|f| !perf.contains(f.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "README figures not in docs/performance.md: {missing:?} (all: {figures:?})"
    );
}
