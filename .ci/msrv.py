"""Checks the declared rust-version (reads `cargo metadata` on stdin): the toolchain in use is
at least that version, and no resolved dependency declares a newer one. clippy's
`incompatible_msrv` lint checks the project's own use of std against it."""
import json
import subprocess
import sys


def version(text):
    parts = [int(p) for p in text.split("-")[0].split(".")]
    return tuple(parts + [0] * (3 - len(parts)))


meta = json.load(sys.stdin)
root = next(p for p in meta["packages"] if p["name"] == "authflow")
declared = root.get("rust_version")
if not declared:
    sys.exit("Cargo.toml declares no rust-version")
rustc = subprocess.run(["rustc", "--version"], capture_output=True, text=True, check=True)
toolchain = rustc.stdout.split()[1]
if version(toolchain) < version(declared):
    sys.exit(f"rustc {toolchain} is older than the declared rust-version {declared}")
resolved = {node["id"] for node in meta["resolve"]["nodes"]}
newer = [
    f"{p['name']} {p['version']} needs Rust {p['rust_version']}"
    for p in meta["packages"]
    if p["id"] in resolved and p.get("rust_version") and version(p["rust_version"]) > version(declared)
]
if newer:
    sys.exit(f"dependencies need a newer Rust than rust-version = {declared}:\n  " + "\n  ".join(newer))
print(f"rust-version {declared}: toolchain {toolchain}, {len(resolved)} crates, none needs a newer Rust")
