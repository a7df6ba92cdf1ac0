//! Compiles the ExHook protocol (v2 for EMQX 5.0–5.8, v3 for 5.9+) into tonic server code.
//! protoc comes from protoc-bin-vendored unless PROTOC names one.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os("PROTOC").is_none() {
        // SAFETY: build scripts are single-threaded; nothing else reads the environment here.
        unsafe { std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?) }
    }
    let protos = [
        "proto/emqx/exhook/v2/exhook.proto",
        "proto/emqx/exhook/v3/exhook.proto",
    ];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    tonic_prost_build::configure()
        // Clients too: the latency bench and loadgen play EMQX.
        .build_client(true)
        .compile_protos(&protos, &["proto"])?;
    Ok(())
}
