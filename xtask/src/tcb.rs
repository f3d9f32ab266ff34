//! `cargo xtask tcb`: how much privileged code there is. Counts the lines
//! of Rust in the kernel and in every crate linked into it (non-blank,
//! non-comment, not test code), per module and per dependency, reads the
//! section sizes of the production kernel binary, writes
//! `target/tcb.json`, and fails when the kernel's own lines exceed the
//! budget.
//!
//! The counts are of source lines, not of what survives linking: a
//! dependency's unused code is counted, which overstates it.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use crate::build::{self, Flavor};
use crate::step::{self, Result};
use crate::{fail, root};

/// Lines of the kernel's own Rust allowed (issue 5: including SVM and VMX).
pub const BUDGET: usize = 8_000;

/// Code lines of one Rust source file: not blank, not a comment, not in an
/// item marked `#[cfg(test)]`. Also returns the modules the file declares
/// as `#[cfg(test)] mod name;` (their files are test code).
pub fn count_code(text: &str) -> (usize, Vec<String>) {
    let mut code = 0;
    let mut test_modules = Vec::new();
    let mut in_block_comment = false;
    let mut test_item_pending = false;
    // Brace depth still to close of a skipped test item.
    let mut skipping: Option<i64> = None;
    for raw in text.lines() {
        let line = raw.trim();
        if in_block_comment {
            if let Some(end) = line.find("*/") {
                in_block_comment = false;
                if line[end + 2..].trim().is_empty() {
                    continue;
                }
            } else {
                continue;
            }
        }
        if let Some(depth) = skipping.as_mut() {
            *depth += braces(line);
            if *depth <= 0 {
                skipping = None;
            }
            continue;
        }
        if line.is_empty() || line.starts_with("//") {
            continue;
        }
        if line.starts_with("/*") {
            if !line.contains("*/") {
                in_block_comment = true;
            }
            continue;
        }
        // Test-only items: `#[cfg(test)]`, the object layer's fuzzing
        // support (compiled for the host fuzz targets, never into the
        // kernel), and the self-test harness (only in test images' kernel;
        // the production kernel, whose sections are reported, has none).
        if line == "#[cfg(test)]"
            || line == "#[cfg(any(test, feature = \"fuzzing\"))]"
            || line == "#[cfg(feature = \"selftest\")]"
        {
            test_item_pending = true;
            continue;
        }
        if test_item_pending && line.starts_with("#[") {
            continue;
        }
        if test_item_pending {
            test_item_pending = false;
            let declaration = line.trim_start_matches("pub(crate) ").trim_start_matches("pub ");
            if let Some(name) = declaration.strip_prefix("mod ").and_then(|rest| rest.strip_suffix(';')) {
                test_modules.push(name.trim().to_owned());
                continue;
            }
            let depth = braces(line);
            if depth > 0 {
                skipping = Some(depth);
            }
            continue;
        }
        code += 1;
    }
    (code, test_modules)
}

/// Net `{` minus `}` on a line, outside string and character literals.
fn braces(line: &str) -> i64 {
    let mut depth = 0;
    let mut in_string = false;
    let mut previous = ' ';
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if previous != '\\' => in_string = !in_string,
            '\'' if !in_string => {
                // A character literal such as '{' or '\''; a lifetime otherwise.
                let rest: String = chars.clone().take(3).collect();
                if rest.starts_with("\\") || rest.chars().nth(1) == Some('\'') {
                    for _ in 0..rest.find('\'').unwrap_or(0) + 1 {
                        chars.next();
                    }
                }
            }
            '{' if !in_string => depth += 1,
            '}' if !in_string => depth -= 1,
            '/' if !in_string && chars.peek() == Some(&'/') => break,
            _ => {}
        }
        previous = c;
    }
    depth
}

/// Every `.rs` file under `dir`, sorted.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// Where the module `name` declared in `file` lives.
fn module_files(file: &Path, name: &str) -> [PathBuf; 2] {
    let dir = file.parent().unwrap_or(Path::new("."));
    let stem = file.file_stem().and_then(|s| s.to_str()).unwrap_or("");
    let base = if matches!(stem, "mod" | "lib" | "main") { dir.to_path_buf() } else { dir.join(stem) };
    [base.join(format!("{name}.rs")), base.join(name).join("mod.rs")]
}

/// Code lines per file of the crate whose sources are under `src`, with
/// test-only files left out.
pub fn count_crate(src: &Path) -> BTreeMap<String, usize> {
    let files = rust_files(src);
    let mut counts = BTreeMap::new();
    let mut test_files = BTreeSet::new();
    for file in &files {
        let text = fs::read_to_string(file).unwrap_or_default();
        let (code, test_modules) = count_code(&text);
        for name in test_modules {
            test_files.extend(module_files(file, &name));
        }
        counts.insert(file.clone(), code);
    }
    counts
        .into_iter()
        .filter(|(file, _)| !test_files.contains(file))
        .map(|(file, code)| (file.strip_prefix(src).unwrap_or(&file).display().to_string(), code))
        .collect()
}

/// The crates linked into the kernel: its normal dependencies, transitively,
/// without proc macros (which run in the compiler). As (name version, src dir).
fn kernel_dependencies() -> Result<Vec<(String, PathBuf)>> {
    let output = crate::build::cargo()
        .current_dir(root())
        .args(["metadata", "--format-version", "1", "--filter-platform", build::TARGET])
        .output()
        .map_err(|e| fail!("cannot run cargo metadata: {e}"))?;
    if !output.status.success() {
        return Err(fail!("cargo metadata failed: {}", String::from_utf8_lossy(&output.stderr)));
    }
    let metadata: serde_json::Value =
        serde_json::from_slice(&output.stdout).map_err(|e| fail!("cargo metadata: {e}"))?;
    let packages: BTreeMap<&str, &serde_json::Value> = metadata["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| Some((p["id"].as_str()?, p)))
        .collect();
    let nodes: BTreeMap<&str, &serde_json::Value> = metadata["resolve"]["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| Some((n["id"].as_str()?, n)))
        .collect();
    let kernel = packages
        .iter()
        .find(|(_, p)| p["name"] == "strata-kernel")
        .map(|(id, _)| *id)
        .ok_or_else(|| fail!("cargo metadata does not list strata-kernel"))?;
    let mut seen = BTreeSet::new();
    let mut pending = vec![kernel];
    let mut crates = Vec::new();
    while let Some(id) = pending.pop() {
        for dep in nodes.get(id).and_then(|n| n["deps"].as_array()).into_iter().flatten() {
            let normal = dep["dep_kinds"].as_array().into_iter().flatten().any(|k| k["kind"].is_null());
            let Some(dep_id) = dep["pkg"].as_str() else { continue };
            if !normal || !seen.insert(dep_id) {
                continue;
            }
            let Some(package) = packages.get(dep_id) else { continue };
            let proc_macro = package["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|t| t["kind"].as_array().into_iter().flatten().any(|k| k == "proc-macro"));
            if proc_macro {
                continue;
            }
            let manifest = PathBuf::from(package["manifest_path"].as_str().unwrap_or_default());
            let name = format!(
                "{} {}",
                package["name"].as_str().unwrap_or("?"),
                package["version"].as_str().unwrap_or("?")
            );
            crates.push((name, manifest.parent().unwrap_or(Path::new(".")).join("src")));
            pending.push(dep_id);
        }
    }
    crates.sort();
    Ok(crates)
}

/// Section sizes of an ELF file, allocated sections only.
fn sections(elf: &Path) -> Result<BTreeMap<String, u64>> {
    let bytes = fs::read(elf).map_err(|e| fail!("reading {}: {e}", elf.display()))?;
    let parsed =
        goblin::elf::Elf::parse(&bytes).map_err(|e| fail!("{} is not an ELF file: {e}", elf.display()))?;
    Ok(parsed
        .section_headers
        .iter()
        .filter(|s| s.sh_flags & u64::from(goblin::elf::section_header::SHF_ALLOC) != 0 && s.sh_size > 0)
        .filter_map(|s| Some((parsed.shdr_strtab.get_at(s.sh_name)?, s.sh_size)))
        // Per-function sections (`.gcc_except_table.<symbol>`) are summed under their kind.
        .fold(BTreeMap::new(), |mut sizes, (name, size)| {
            let kind = match name.get(1..).and_then(|rest| rest.find('.')) {
                Some(dot) => &name[..dot + 1],
                None => name,
            };
            *sizes.entry(kind.to_owned()).or_insert(0) += size;
            sizes
        }))
}

/// Counts, writes `target/tcb.json`, prints a summary, and checks the budget.
pub fn run() -> Result {
    let binaries = build::bare_metal(Flavor::Production)?;
    let started = step::begin("trusted computing base: kernel and linked crates, lines of Rust and sections");
    let kernel = count_crate(&root().join("kernel/src"));
    let kernel_total: usize = kernel.values().sum();
    let mut dependencies = BTreeMap::new();
    for (name, src) in kernel_dependencies()? {
        dependencies.insert(name, count_crate(&src).values().sum::<usize>());
    }
    let dependency_total: usize = dependencies.values().sum();
    let sections = sections(&binaries.kernel)?;
    let json = serde_json::json!({
        "budget": BUDGET,
        "kernel": { "lines": kernel_total, "modules": kernel },
        "dependencies": { "lines": dependency_total, "crates": dependencies },
        "kernel_sections": sections,
    });
    let path = root().join("target/tcb.json");
    fs::write(&path, serde_json::to_string_pretty(&json).unwrap_or_default() + "\n")?;

    let mut by_directory: BTreeMap<String, usize> = BTreeMap::new();
    for (file, lines) in &kernel {
        let directory = Path::new(file).parent().map(|p| p.display().to_string()).unwrap_or_default();
        *by_directory.entry(if directory.is_empty() { "(top)".into() } else { directory }).or_default() +=
            lines;
    }
    println!("    kernel/src: {kernel_total} lines (budget {BUDGET})");
    for (directory, lines) in &by_directory {
        println!("      {directory:<24} {lines:>6}");
    }
    println!("    linked crates: {dependency_total} lines");
    for (name, lines) in &dependencies {
        println!("      {name:<32} {lines:>6}");
    }
    println!("    kernel binary sections (bytes):");
    for (name, size) in &sections {
        println!("      {name:<24} {size:>8}");
    }
    println!("    wrote {}", path.display());
    if kernel_total > BUDGET {
        return Err(fail!("the kernel has {kernel_total} lines of Rust, over the budget of {BUDGET}"));
    }
    step::end(started, "within budget");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blank_lines_comments_and_test_code_do_not_count() {
        let source = r#"
//! Module docs.
use core::fmt; // trailing comment: the line counts

/* a block
   comment */
fn real() -> char {
    let text = "not a { brace";
    '{'
}

#[cfg(test)]
mod tests {
    fn helper() {
        if true { }
    }
}

#[cfg(test)]
mod more_tests;

fn after() {}
"#;
        let (code, test_modules) = count_code(source);
        // use, fn real, let, '{', }, fn after
        assert_eq!(code, 6);
        assert_eq!(test_modules, ["more_tests"]);
    }

    #[test]
    fn the_self_test_harness_is_test_code() {
        let source = "#[cfg(feature = \"selftest\")]\npub mod selftest;\npub mod real;\n";
        assert_eq!(count_code(source), (1, vec!["selftest".to_owned()]));
        let inline = "fn f() {\n    #[cfg(feature = \"selftest\")]\n    check();\n    real();\n}\n";
        assert_eq!(count_code(inline).0, 3);
    }

    #[test]
    fn fuzzing_support_is_test_code() {
        let source = "#[cfg(any(test, feature = \"fuzzing\"))]\npub mod model;\npub mod real;\n";
        assert_eq!(count_code(source), (1, vec!["model".to_owned()]));
    }

    #[test]
    fn a_test_only_function_is_skipped_whole() {
        let source = "#[cfg(test)]\n#[allow(dead_code)]\nfn helper() {\n    one();\n}\nfn kept() {}\n";
        assert_eq!(count_code(source).0, 1);
    }

    #[test]
    fn test_module_files_are_found_next_to_their_parent() {
        let [flat, nested] = module_files(Path::new("src/object/mod.rs"), "tests");
        assert_eq!(
            (flat, nested),
            (PathBuf::from("src/object/tests.rs"), PathBuf::from("src/object/tests/mod.rs"))
        );
        let [flat, _] = module_files(Path::new("src/object/cspace.rs"), "extra");
        assert_eq!(flat, PathBuf::from("src/object/cspace/extra.rs"));
    }

    #[test]
    fn the_kernel_has_code_and_its_tests_are_left_out() {
        let counts = count_crate(&root().join("kernel/src"));
        assert!(counts.keys().all(|file| !file.ends_with("_tests.rs")), "test files counted: {counts:?}");
        assert!(counts.get("arch/x86_64/fastpath.rs").is_some_and(|&lines| lines > 50));
    }
}
