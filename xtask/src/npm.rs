//! The browser package: wasm build → wasm-bindgen (web target) → wasm-opt → esbuild → `package.json` →
//! `npm pack`, then the size report against the budget.

use std::fs;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result, bail};
use flate2::Compression;
use flate2::write::GzEncoder;
use serde_json::{Value, json};

use crate::workspace::Workspace;
use crate::{cmd, minify};

/// The size budget (issue #4): gzipped `.wasm` plus gzipped JS glue. The build fails above it.
pub const BUDGET_GZ_BYTES: usize = 40 * 1024;
const CRATE: &str = "presence-wasm";
/// File stem of the generated module (`presence_wasm.js`, `presence_wasm_bg.wasm`, …).
const STEM: &str = "presence_wasm";
const NPM_NAME: &str = "@presence-rs/presence";

/// Whether to `npm pack` the package after building it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Pack {
    /// Write a `.tgz` into the target directory.
    Yes,
    /// Stop after the package folder and size report.
    No,
}

/// Builds `presence-wasm/pkg/` (and with [`Pack::Yes`] the tarball); fails over the budget.
pub fn build(ws: &Workspace, pack: Pack) -> Result<()> {
    cmd::run(cmd::cargo().current_dir(&ws.root).args([
        "build",
        "--package",
        CRATE,
        "--target",
        "wasm32-unknown-unknown",
        "--profile",
        "wasm-release",
        // Without `std`: see the `std` feature in presence-wasm/Cargo.toml.
        "--no-default-features",
    ]))?;
    let input = ws
        .target
        .join("wasm32-unknown-unknown/wasm-release")
        .join(format!("{STEM}.wasm"));
    let pkg = ws.root.join(CRATE).join("pkg");
    if pkg.exists() {
        fs::remove_dir_all(&pkg).with_context(|| format!("removing {}", pkg.display()))?;
    }

    println!(
        "$ wasm-bindgen --target web --typescript {} --out-dir {}",
        input.display(),
        pkg.display()
    );
    wasm_bindgen_cli_support::Bindgen::new()
        .input_path(&input)
        .out_name(STEM)
        .web(true)?
        .typescript(true)
        // The CLI's default; without it `init()` with no argument cannot find the .wasm.
        .omit_default_module_path(false)
        // `PRESENCE_SIZE_PROFILE=1` keeps function names for `twiggy top` (see the crate README).
        .keep_debug(profile_names())
        .generate(&pkg)
        .context("wasm-bindgen")?;

    let wasm = pkg.join(format!("{STEM}_bg.wasm"));
    let optimized = pkg.join(format!("{STEM}_bg.opt.wasm"));
    let wasm_opt = ws.root.join("xtask/node/node_modules/.bin/wasm-opt");
    cmd::run(
        cmd::in_dir(&wasm_opt, &pkg)
            // `--flatten --rereloop` (twice) rebuilds the control flow from scratch before -Oz,
            // which then finds more to merge (~300 bytes gzipped; semantics-preserving, like
            // every pass here). `--converge` repeats -Oz while it still shrinks the module
            // (~250 bytes). `--low-memory-unused` lets it fold constant offsets into loads and
            // stores (~500 bytes); sound for Rust, which never reaches an address by wrapping
            // past 2^32. Not `--traps-never-happen` (~700 bytes): it would turn a trap (a
            // panic) into running on with bad state.
            .args([
                "--flatten",
                "--rereloop",
                "-Oz",
                "--flatten",
                "--rereloop",
                "-Oz",
                "--converge",
                "--low-memory-unused",
                "--strip-producers",
            ])
            .args(profile_names().then_some("-g"))
            .arg(&wasm)
            .arg("-o")
            .arg(&optimized),
    )?;
    fs::rename(&optimized, &wasm).context("replacing the .wasm with the optimized one")?;

    let glue = pkg.join(format!("{STEM}.js"));
    if !profile_names() {
        minify::names(&wasm_opt, &wasm, &glue, &pkg.join(format!("{STEM}.d.ts")))?;
        // It lists the raw exports under their old names, and no supported use imports the
        // `.wasm` as a module.
        fs::remove_file(pkg.join(format!("{STEM}_bg.wasm.d.ts")))?;
    }

    // The glue ships minified, as the hosted SDKs it is compared with do; the types live in the
    // `.d.ts`, so nothing an editor shows is lost. Bundling folds the crate's JS snippets
    // (`snippets/`) into it: one file to load, and all of it counted in the size.
    let esbuild = ws.root.join("xtask/node/node_modules/.bin/esbuild");
    cmd::run(cmd::in_dir(&esbuild, &pkg).arg(&glue).args([
        "--bundle",
        "--minify",
        // wasm-bindgen's warnings about deprecated init arguments and MIME types; the SDK
        // reports through `reportError` and `Error`s, never the console.
        "--drop:console",
        "--format=esm",
        "--target=es2020",
        "--allow-overwrite",
        &format!("--outfile={}", glue.display()),
    ]))?;
    let snippets = pkg.join("snippets");
    if snippets.exists() {
        fs::remove_dir_all(&snippets)?;
    }

    write_package_json(ws, &pkg)?;
    if pack == Pack::Yes {
        fs::create_dir_all(&ws.target)?;
        let pack_dir = ws.target.to_string_lossy().into_owned();
        cmd::run(cmd::in_dir("npm", &pkg).args(["pack", "--pack-destination", &pack_dir]))?;
    }
    report_sizes(&wasm, &pkg.join(format!("{STEM}.js")))
}

fn profile_names() -> bool {
    std::env::var_os("PRESENCE_SIZE_PROFILE").is_some()
}

fn write_package_json(ws: &Workspace, pkg: &Path) -> Result<()> {
    let mut files: Vec<String> = fs::read_dir(pkg)?
        .map(|entry| entry.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()?;
    files.retain(|name| name != "package.json");
    files.sort();
    let js = format!("./{STEM}.js");
    let types = format!("./{STEM}.d.ts");
    let wasm = format!("./{STEM}_bg.wasm");
    // Export conditions are tried in order (`types` first, `default` last) and serde_json's map
    // would sort them, so `exports` is written as text; the other values go through serde_json.
    let exports = format!(
        r#"{{
    ".": {{ "types": "{types}", "import": "{js}", "default": "{js}" }},
    "{wasm}": "{wasm}",
    "./package.json": "./package.json"
  }}"#
    );
    let pretty = |value: Value| -> Result<String> {
        Ok(serde_json::to_string_pretty(&value)?.replace('\n', "\n  "))
    };
    let fields = [
        ("name", pretty(json!(NPM_NAME))?),
        (
            "version",
            pretty(json!(ws.package_field(CRATE, "version")?))?,
        ),
        (
            "description",
            pretty(json!(ws.package_field(CRATE, "description")?))?,
        ),
        (
            "license",
            pretty(json!(ws.package_field(CRATE, "license")?))?,
        ),
        (
            "repository",
            pretty(json!({ "type": "git", "url": ws.package_field(CRATE, "repository")? }))?,
        ),
        ("type", pretty(json!("module"))?),
        ("main", pretty(json!(js))?),
        ("module", pretty(json!(js))?),
        ("types", pretty(json!(types))?),
        ("exports", exports),
        ("files", pretty(json!(files))?),
        ("sideEffects", pretty(json!(false))?),
    ];
    let body: Vec<String> = fields
        .iter()
        .map(|(key, value)| format!("  \"{key}\": {value}"))
        .collect();
    let text = format!("{{\n{}\n}}\n", body.join(",\n"));
    serde_json::from_str::<Value>(&text).context("generated package.json is not valid JSON")?;
    fs::write(pkg.join("package.json"), text).context("writing package.json")
}

fn report_sizes(wasm: &Path, js: &Path) -> Result<()> {
    let mut total_gz = 0;
    println!("\n{:<28} {:>10} {:>10}", "file", "raw", "gzip -9");
    for path in [wasm, js] {
        let (raw, gz) = sizes(path)?;
        total_gz += gz;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default();
        println!("{name:<28} {:>10} {:>10}", kb(raw), kb(gz));
    }
    println!(
        "{:<28} {:>10} {:>10}  (budget {})",
        "total",
        "",
        kb(total_gz),
        kb(BUDGET_GZ_BYTES)
    );
    if total_gz > BUDGET_GZ_BYTES {
        bail!(
            "browser bundle is {} gzipped, over the {} budget",
            kb(total_gz),
            kb(BUDGET_GZ_BYTES)
        );
    }
    Ok(())
}

/// Raw and gzipped (level 9) size of a file.
pub fn sizes(path: &Path) -> Result<(usize, usize)> {
    let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let mut gz = GzEncoder::new(Vec::new(), Compression::best());
    gz.write_all(&bytes)?;
    Ok((bytes.len(), gz.finish()?.len()))
}

fn kb(bytes: usize) -> String {
    format!("{:.1} KB", bytes as f64 / 1024.0)
}
