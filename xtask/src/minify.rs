//! Short import and export names for the browser module.
//!
//! wasm-bindgen names every import after its Rust path plus a hash
//! (`__wbg_setItem_cfa3cb31f271776a`), and each name sits in both the `.wasm`
//! and the glue. Hashes do not compress, so these names were about 2 KB of the
//! gzipped bundle. binaryen renames them (`a`, `b`, …) and prints the mapping;
//! this applies the mapping to the glue and its types, and fails if any old
//! name is left, so a change in wasm-bindgen's output cannot slip through.

use std::fs;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::cmd;

/// Minifies `wasm` in place and rewrites `glue` (the JS) and `types` (its `.d.ts`) to match.
pub fn names(wasm_opt: &Path, wasm: &Path, glue: &Path, types: &Path) -> Result<()> {
    let mapping = cmd::output(
        cmd::in_dir(wasm_opt, wasm.parent().unwrap_or(Path::new(".")))
            .arg(wasm)
            .arg("--minify-imports-and-exports-and-modules")
            // The last binaryen run, so the section that tells it the features can go.
            .arg("--strip-target-features")
            .arg("-o")
            .arg(wasm),
    )?;
    let mapping: Value = serde_json::from_str(&mapping).context("wasm-opt's name mapping")?;
    let mut js = fs::read_to_string(glue).with_context(|| format!("reading {}", glue.display()))?;
    let mut dts =
        fs::read_to_string(types).with_context(|| format!("reading {}", types.display()))?;

    // Imports by module: wasm-bindgen's own (an object literal in the glue, `const import0 = {…}`)
    // and the crate's JS snippets (namespaces, `import * as import1 from "./snippets/…"`).
    let mut modules: Vec<(&str, Vec<(&str, &str)>)> = Vec::new();
    for entry in list(&mapping, "imports")? {
        let [module, old, new] = strings::<3>(entry)?;
        match modules.iter_mut().find(|(m, _)| *m == module) {
            Some((_, names)) => names.push((old, new)),
            None => modules.push((module, vec![(old, new)])),
        }
    }
    // binaryen names every module `a`: one object must hold every import.
    let mut main = None;
    let mut forwarded = String::new();
    for (module, names) in &modules {
        let (_, ident) = module_entry(&js, module)?;
        if js.contains(&format!("const {ident} = {{")) {
            for (old, new) in names {
                // Each import is a key of the object: `name: function(…)`.
                if replace_word(&mut js, "", old, new) == 0 {
                    bail!("import {old} is not in the glue");
                }
            }
            let (range, _) = module_entry(&js, module)?;
            js.replace_range(range, &format!("\"a\": {ident},"));
            main = Some(ident);
        } else if js.contains(&format!("import * as {ident} from")) {
            for (old, new) in names {
                forwarded.push_str(&format!("{new}: {ident}.{old}, "));
            }
            // wasm-bindgen names a snippet once per direct import (`"…/browser.js": import1,
            // "…/browser.js": import2`, each `import * as` the same module): drop every entry.
            while let Some((range, _)) = module_entries(&js, module).into_iter().next() {
                js.replace_range(range, "");
            }
        } else {
            bail!("the glue's import module {module:?} is neither an object nor a namespace");
        }
    }
    let main = main.context("no import object in the glue")?;
    let open = format!("const {main} = {{");
    let at = js.find(&open).context("import object")? + open.len();
    js.insert_str(at, &forwarded);

    for entry in list(&mapping, "exports")? {
        let [old, new] = strings::<2>(entry)?;
        replace_word(&mut js, "wasm.", old, new);
        replace_word(&mut dts, "readonly ", old, new);
        if find_word(&js, &format!(".{old}")).is_some() {
            bail!("export {old} is used in the glue in a way this rewrite does not know");
        }
    }
    fs::write(glue, js)?;
    fs::write(types, dts)?;
    Ok(())
}

/// The first `"module": ident,` entry of the glue's imports and the identifier it names; for
/// wasm-bindgen's own module (an object literal) the only one.
fn module_entry(js: &str, module: &str) -> Result<(std::ops::Range<usize>, String)> {
    let entries = module_entries(js, module);
    let first = entries.first().cloned();
    match first {
        Some((range, ident))
            if entries.len() == 1 || js.contains(&format!("import * as {ident} from")) =>
        {
            Ok((range, ident))
        }
        _ => bail!("import module {module:?} is not named exactly once in the glue"),
    }
}

/// Every `"module": ident,` entry of the glue's imports, with the identifier it names.
fn module_entries(js: &str, module: &str) -> Vec<(std::ops::Range<usize>, String)> {
    let key = format!("\"{module}\": ");
    js.match_indices(&key)
        .map(|(start, _)| {
            let rest = &js[start + key.len()..];
            let ident: String = rest.chars().take_while(|&c| is_ident(c)).collect();
            let mut end = start + key.len() + ident.len();
            if js[end..].starts_with(',') {
                end += 1;
            }
            (start..end, ident)
        })
        .collect()
}

fn list<'a>(mapping: &'a Value, key: &str) -> Result<&'a Vec<Value>> {
    mapping[key]
        .as_array()
        .with_context(|| format!("wasm-opt's mapping has no {key:?} list"))
}

fn strings<const N: usize>(entry: &Value) -> Result<[&str; N]> {
    let items: Vec<&str> = entry
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    items
        .try_into()
        .map_err(|_| anyhow::anyhow!("unexpected mapping entry {entry}"))
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '$'
}

/// Where `needle` (ending in an identifier) occurs as a whole word.
fn find_word(text: &str, needle: &str) -> Option<usize> {
    text.match_indices(needle).map(|(i, _)| i).find(|&i| {
        let before = text[..i].chars().next_back();
        let after = text[i + needle.len()..].chars().next();
        !before.is_some_and(is_ident) && !after.is_some_and(is_ident)
    })
}

/// Replaces every whole-word `{prefix}{old}` with `{prefix}{new}`; returns how many.
fn replace_word(text: &mut String, prefix: &str, old: &str, new: &str) -> usize {
    let needle = format!("{prefix}{old}");
    let mut count = 0;
    while let Some(i) = find_word(text, &needle) {
        text.replace_range(i + prefix.len()..i + needle.len(), new);
        count += 1;
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_whole_words_only() {
        let mut s = String::from("wasm.a_b(x); wasm.a_bc(); xwasm.a_b; wasm.a_b");
        assert_eq!(replace_word(&mut s, "wasm.", "a_b", "Q"), 2);
        assert_eq!(s, "wasm.Q(x); wasm.a_bc(); xwasm.a_b; wasm.Q");
    }
}
