//! The build script of the plugins that need little stack (none of them builds serde_json
//! documents, whose parsing recurses deeply): 32 KiB of stack keep their initial linear memory at
//! one 64 KiB page. The gateway resets a plugin's memory after every call, so its initial size
//! is part of what each call costs (the workspace default, `.cargo/config.toml`, is 128 KiB).
fn main() {
    println!("cargo::rustc-link-arg-cdylib=-zstack-size=32768");
}
