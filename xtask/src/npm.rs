//! The npm packages: the SDK (wasm build → wasm-bindgen (web target) → wasm-opt → esbuild →
//! declarations → `package.json`), its React bindings (tsc → `package.json`) and the Node server
//! SDK (`presence-node/`, shipped as written), each with the README and licenses, then `npm pack`
//! and the size report against the budget.

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
/// The React bindings: sources in `presence-wasm/react/`, built into its `pkg/`.
const REACT_NAME: &str = "@presence-rs/react";
const REACT_DIR: &str = "presence-wasm/react";
/// Node versions the packages' tooling (bundlers, type checkers, SSR imports) may run on.
const NODE_ENGINES: &str = ">=18";
/// The Node server SDK: plain ESM and hand-written declarations in `presence-node/`, no build
/// step; staged with the licenses into `target/npm/presence-node/` and packed from there.
const NODE_NAME: &str = "@presence-rs/node";
const NODE_DIR: &str = "presence-node";
/// What the Node package ships besides `package.json`; its `files` must list exactly these.
const NODE_FILES: &[&str] = &[
    "LICENSE-APACHE",
    "LICENSE-MIT",
    "README.md",
    "index.d.ts",
    "index.js",
];

/// Whether to `npm pack` the package after building it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Pack {
    /// Write a `.tgz` into the target directory.
    Yes,
    /// Stop after the package folder and size report.
    No,
}

/// Builds `presence-wasm/pkg/` and `presence-wasm/react/pkg/`, stages the Node package (and with
/// [`Pack::Yes`] packs the three tarballs); fails over the budget.
pub fn build(ws: &Workspace, pack: Pack) -> Result<()> {
    let pkg = build_sdk(ws)?;
    let react = build_react(ws)?;
    let node = stage_node(ws)?;
    if pack == Pack::Yes {
        fs::create_dir_all(&ws.target)?;
        let pack_dir = ws.target.to_string_lossy().into_owned();
        for dir in [&pkg, &react, &node] {
            cmd::run(cmd::in_dir("npm", dir).args(["pack", "--pack-destination", &pack_dir]))?;
        }
    }
    report_sizes(ws, &pkg, &react, &node)
}

/// One of the three npm packages.
#[derive(Clone, Copy)]
pub enum Package {
    /// `@presence-rs/presence`.
    Sdk,
    /// `@presence-rs/react`.
    React,
    /// `@presence-rs/node`.
    Node,
}

/// The tarball `npm pack` writes for `package` into the target directory.
pub fn tarball(ws: &Workspace, package: Package) -> Result<std::path::PathBuf> {
    let version = ws.package_field(CRATE, "version")?;
    let name = match package {
        Package::Sdk => NPM_NAME,
        Package::React => REACT_NAME,
        Package::Node => NODE_NAME,
    };
    let file = format!(
        "{}-{version}.tgz",
        name.trim_start_matches('@').replace('/', "-")
    );
    Ok(ws.target.join(file))
}

fn build_sdk(ws: &Workspace) -> Result<std::path::PathBuf> {
    // For every crate of the module (each is optimized before the fat LTO
    // too): LLVM's inlining threshold at "z" is 5; 8 makes the bundle 0.3 KB
    // smaller gzipped (6 to 10 alike, 11 and up larger; README, Size). Set
    // as the encoded flags, which no `RUSTFLAGS` of the caller overrides.
    let mut build = cmd::cargo();
    build
        .current_dir(&ws.root)
        .env("CARGO_ENCODED_RUSTFLAGS", "-Cllvm-args=-inline-threshold=8")
        .env_remove("RUSTFLAGS")
        .args([
            "build",
            "--package",
            CRATE,
            "--target",
            "wasm32-unknown-unknown",
            "--profile",
            "wasm-release",
            // Without `std`: see the `std` feature in presence-wasm/Cargo.toml.
            "--no-default-features",
        ]);
    cmd::run(&mut build)?;
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

    let types = pkg.join(format!("{STEM}.d.ts"));
    let dts = fs::read_to_string(&types).with_context(|| format!("reading {}", types.display()))?;
    fs::write(&types, finish_declarations(&dts)?)?;
    add_docs(ws, &pkg, &ws.root.join(CRATE).join("README.md"))?;
    let js = format!("./{STEM}.js");
    let wasm = format!("./{STEM}_bg.wasm");
    write_package_json(
        ws,
        &pkg,
        &Manifest {
            name: NPM_NAME,
            description: ws.package_field(CRATE, "description")?,
            js: &js,
            types: &format!("./{STEM}.d.ts"),
            // Bundlers that do not follow `new URL(…, import.meta.url)` import the `.wasm` by path.
            also_exports: Some(&wasm),
            peers: None,
        },
    )?;
    Ok(pkg)
}

/// `presence-wasm/react/pkg/`: the bindings compiled by tsc (JavaScript and declarations, checked
/// against the SDK's declarations just built), with their README, the licenses and a manifest
/// whose peer dependencies are React and this very SDK version.
fn build_react(ws: &Workspace) -> Result<std::path::PathBuf> {
    let dir = ws.root.join(REACT_DIR);
    let pkg = dir.join("pkg");
    if pkg.exists() {
        fs::remove_dir_all(&pkg).with_context(|| format!("removing {}", pkg.display()))?;
    }
    let tsc = ws.root.join("xtask/node/node_modules/.bin/tsc");
    cmd::run(cmd::in_dir(&tsc, &dir).args(["--project", "tsconfig.json"]))?;
    add_docs(ws, &pkg, &dir.join("README.md"))?;
    let version = ws.package_field(CRATE, "version")?;
    write_package_json(
        ws,
        &pkg,
        &Manifest {
            name: REACT_NAME,
            description: "React hooks for presence-rs: a provider that owns one client, and \
                          hooks that re-render only when their slice of presence changes."
                .into(),
            js: "./index.js",
            types: "./index.d.ts",
            also_exports: None,
            peers: Some(json!({ NPM_NAME: version, "react": ">=18" })),
        },
    )?;
    Ok(pkg)
}

/// `target/npm/presence-node/`: the Node package's files as written, its README and the licenses.
/// Its committed `package.json` must name the crates' version and license, and list in `files`
/// exactly what is staged, so a release cannot ship a stale version or miss a file.
fn stage_node(ws: &Workspace) -> Result<std::path::PathBuf> {
    let dir = ws.root.join(NODE_DIR);
    let manifest_path = dir.join("package.json");
    let text = fs::read_to_string(&manifest_path)
        .with_context(|| format!("reading {}", manifest_path.display()))?;
    let manifest: Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not JSON", manifest_path.display()))?;
    let want = [
        ("name", NODE_NAME.to_owned()),
        ("version", ws.package_field(CRATE, "version")?),
        ("license", ws.package_field(CRATE, "license")?),
    ];
    for (field, value) in want {
        let found = manifest[field].as_str().unwrap_or_default();
        if found != value {
            bail!(
                "{} says {field} {found:?}; it must be {value:?} (the crates' {field})",
                manifest_path.display()
            );
        }
    }
    let mut files: Vec<&str> = manifest["files"]
        .as_array()
        .context("presence-node/package.json has no `files` list")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    files.sort_unstable();
    if files != NODE_FILES {
        bail!("presence-node/package.json lists files {files:?}; the package ships {NODE_FILES:?}");
    }
    let staging = ws.target.join("npm").join(NODE_DIR);
    if staging.exists() {
        fs::remove_dir_all(&staging).with_context(|| format!("removing {}", staging.display()))?;
    }
    fs::create_dir_all(&staging)?;
    add_docs(ws, &staging, &dir.join("README.md"))?;
    for file in ["index.js", "index.d.ts", "package.json"] {
        fs::copy(dir.join(file), staging.join(file))
            .with_context(|| format!("copying {NODE_DIR}/{file}"))?;
    }
    Ok(staging)
}

/// wasm-bindgen's declarations made fit for a strict app: its `InitOutput` lists the module's raw
/// exports under minified names typed `any` (apps never touch them), and its `init` is named
/// after a glue variable. Fails if `any` or a bare `Function` type is left anywhere, so a loose
/// type cannot come back unnoticed.
fn finish_declarations(dts: &str) -> Result<String> {
    let mut dts = dts.to_owned();
    let start = dts
        .find("export interface InitOutput {")
        .context("no `InitOutput` in the generated declarations")?;
    let len = dts[start..]
        .find("\n}\n")
        .context("`InitOutput` does not end")?
        + 3;
    dts.replace_range(
        start..start + len,
        "/** The instantiated module: the SDK's internals, under no stable names. */\n\
         export type InitOutput = WebAssembly.Exports;\n",
    );
    let init = "export default function __wbg_init (";
    if !dts.contains(init) {
        bail!("no `{init}` in the generated declarations");
    }
    dts = dts.replace(init, "export default function init(");
    for loose in ["any", "Function"] {
        if without_comments(&dts)
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '$'))
            .any(|word| word == loose)
        {
            bail!("the declarations still use `{loose}`");
        }
    }
    Ok(dts)
}

/// `text` without its `/* … */` and `// …` comments.
fn without_comments(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find(['/']) {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        rest = if tail.starts_with("/*") {
            tail.find("*/").map_or("", |end| &tail[end + 2..])
        } else if tail.starts_with("//") {
            tail.find('\n').map_or("", |end| &tail[end..])
        } else {
            out.push('/');
            &tail[1..]
        };
    }
    out.push_str(rest);
    out
}

/// Copies `readme` and the repository's license texts into the package folder `pkg`.
fn add_docs(ws: &Workspace, pkg: &Path, readme: &Path) -> Result<()> {
    fs::copy(readme, pkg.join("README.md"))
        .with_context(|| format!("copying {}", readme.display()))?;
    for license in ["LICENSE-MIT", "LICENSE-APACHE"] {
        fs::copy(ws.root.join(license), pkg.join(license))
            .with_context(|| format!("copying {license}"))?;
    }
    Ok(())
}

fn profile_names() -> bool {
    std::env::var_os("PRESENCE_SIZE_PROFILE").is_some()
}

/// What differs between the two packages' manifests.
struct Manifest<'a> {
    name: &'a str,
    description: String,
    /// The entry module and its declarations.
    js: &'a str,
    types: &'a str,
    /// One more file that may be imported by path.
    also_exports: Option<&'a str>,
    peers: Option<Value>,
}

fn write_package_json(ws: &Workspace, pkg: &Path, m: &Manifest) -> Result<()> {
    let mut files: Vec<String> = fs::read_dir(pkg)?
        .map(|entry| entry.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()?;
    files.retain(|name| name != "package.json");
    files.sort();
    let (js, types) = (m.js, m.types);
    let also = m
        .also_exports
        .map(|f| format!("\n    \"{f}\": \"{f}\","))
        .unwrap_or_default();
    // Export conditions are tried in order (`types` first, `default` last) and serde_json's map
    // would sort them, so `exports` is written as text; the other values go through serde_json.
    let exports = format!(
        r#"{{
    ".": {{ "types": "{types}", "import": "{js}", "default": "{js}" }},{also}
    "./package.json": "./package.json"
  }}"#
    );
    let pretty = |value: Value| -> Result<String> {
        Ok(serde_json::to_string_pretty(&value)?.replace('\n', "\n  "))
    };
    let mut fields = vec![
        ("name", pretty(json!(m.name))?),
        (
            "version",
            pretty(json!(ws.package_field(CRATE, "version")?))?,
        ),
        ("description", pretty(json!(m.description))?),
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
        // Importing either module runs nothing outside it, so unused parts may be dropped.
        ("sideEffects", pretty(json!(false))?),
        ("engines", pretty(json!({ "node": NODE_ENGINES }))?),
    ];
    if let Some(peers) = &m.peers {
        fields.push(("peerDependencies", pretty(peers.clone())?));
    }
    let body: Vec<String> = fields
        .iter()
        .map(|(key, value)| format!("  \"{key}\": {value}"))
        .collect();
    let text = format!("{{\n{}\n}}\n", body.join(",\n"));
    serde_json::from_str::<Value>(&text).context("generated package.json is not valid JSON")?;
    fs::write(pkg.join("package.json"), text).context("writing package.json")
}

/// The SDK's two files against the budget, then the React bindings, as shipped and minified as an
/// app's bundler minifies them (what its users download on top of the SDK; not in the budget,
/// which apps without React never pay), then the Node package's module (servers only).
fn report_sizes(ws: &Workspace, pkg: &Path, react: &Path, node: &Path) -> Result<()> {
    let minified = ws.target.join("tmp").join("react-index.min.js");
    let esbuild = ws.root.join("xtask/node/node_modules/.bin/esbuild");
    cmd::output(
        cmd::in_dir(&esbuild, react)
            .args(["index.js", "--minify", "--log-level=warning"])
            .arg(format!("--outfile={}", minified.display())),
    )?;
    let mut total_gz = 0;
    println!("\n{:<32} {:>10} {:>10}", "file", "raw", "gzip -9");
    let line = |name: &str, path: &Path| -> Result<usize> {
        let (raw, gz) = sizes(path)?;
        println!("{name:<32} {:>10} {:>10}", kb(raw), kb(gz));
        Ok(gz)
    };
    for file in [format!("{STEM}_bg.wasm"), format!("{STEM}.js")] {
        total_gz += line(&file, &pkg.join(&file))?;
    }
    println!(
        "{:<32} {:>10} {:>10}  (budget {}; {total_gz} bytes)",
        "total",
        "",
        kb(total_gz),
        kb(BUDGET_GZ_BYTES)
    );
    line(&format!("{REACT_NAME} index.js"), &react.join("index.js"))?;
    line("  minified, as apps bundle it", &minified)?;
    line(&format!("{NODE_NAME} index.js"), &node.join("index.js"))?;
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
    format!("{:.1} KiB", bytes as f64 / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GENERATED: &str = "/** any later call throws */\nexport class C {}\n\
        export interface InitOutput {\n    readonly N: WebAssembly.Memory;\n    \
        readonly P: (a: number, c: any) => [number];\n}\n\
        export default function __wbg_init (m?: InitInput): Promise<InitOutput>;\n";

    #[test]
    fn declarations_lose_the_raw_exports_and_the_glue_name() {
        let dts = finish_declarations(GENERATED).unwrap();
        assert!(dts.contains("export type InitOutput = WebAssembly.Exports;\n"));
        assert!(dts.contains("export default function init(m?: InitInput)"));
        assert!(!dts.contains("readonly N") && !dts.contains("__wbg_init"));
        // `any` in a comment is prose.
        assert!(dts.starts_with("/** any later call throws */"));
    }

    #[test]
    fn a_loose_type_left_in_the_declarations_fails_the_build() {
        for loose in ["  f(x: any): void;\n", "  g: Function; // any\n"] {
            let dts = GENERATED.replace(
                "export class C {}",
                &format!("export class C {{\n{loose}}}"),
            );
            assert!(finish_declarations(&dts).is_err(), "{loose}");
        }
    }
}
