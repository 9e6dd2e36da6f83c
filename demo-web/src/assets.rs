//! The page (compiled into the binary) and the npm package (read from disk,
//! where `cargo xtask npm` puts it), each with the right content type.

use std::path::{Path as FsPath, PathBuf};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

const INDEX_HTML: &str = include_str!("../static/index.html");
const APP_JS: &str = include_str!("../static/app.js");
const STYLE_CSS: &str = include_str!("../static/style.css");
const FAVICON_SVG: &str = include_str!("../static/favicon.svg");

/// The page's routes and `/pkg/...`.
pub fn router(pkg_dir: PathBuf) -> Router {
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/style.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE_CSS) }),
        )
        .route(
            "/favicon.svg",
            get(|| async { asset("image/svg+xml", FAVICON_SVG) }),
        )
        .route("/pkg/{*path}", get(package_file))
        .with_state(pkg_dir)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// The content type of a package file, by extension; `None` for files the
/// page never loads.
fn content_type(path: &str) -> Option<&'static str> {
    let ext = path.rsplit_once('.').map(|(_, e)| e)?;
    Some(match ext {
        "js" => "text/javascript; charset=utf-8",
        // Required for WebAssembly.instantiateStreaming.
        "wasm" => "application/wasm",
        "json" => "application/json",
        "ts" => "text/plain; charset=utf-8",
        _ => return None,
    })
}

/// Whether `path` stays inside the package folder: plain names only, no
/// `..`, no hidden files, no absolute paths.
fn safe(path: &str) -> bool {
    !path.is_empty()
        && path.split('/').all(|part| {
            !part.is_empty()
                && !part.starts_with('.')
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        })
}

async fn package_file(State(dir): State<PathBuf>, Path(path): Path<String>) -> Response {
    let Some(content_type) = content_type(&path).filter(|_| safe(&path)) else {
        return (StatusCode::NOT_FOUND, "not found").into_response();
    };
    // A few small files: a blocking read on the blocking pool (tokio's `fs`
    // feature would rebuild tokio for the whole workspace).
    let file = dir.join(FsPath::new(&path));
    let read = tokio::task::spawn_blocking(move || std::fs::read(file)).await;
    match read {
        Ok(Ok(bytes)) => (
            [
                (header::CONTENT_TYPE, content_type),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            bytes,
        )
            .into_response(),
        _ => (
            StatusCode::NOT_FOUND,
            format!("{path} is not in the npm package folder; run `cargo xtask npm` (or `cargo xtask demo`)"),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_paths_inside_the_package_are_served() {
        assert!(safe("presence_wasm.js"));
        assert!(safe("snippets/x-1/inline0.js"));
        for bad in [
            "",
            "../Cargo.toml",
            "a/../../b",
            "/etc/passwd",
            ".env",
            "a//b",
            "a\\b",
        ] {
            assert!(!safe(bad), "{bad:?}");
        }
        assert_eq!(
            content_type("presence_wasm_bg.wasm"),
            Some("application/wasm")
        );
        assert_eq!(content_type("secret.key"), None);
        assert_eq!(content_type("noext"), None);
    }
}
