//! The OCI images `cargo xtask oci` makes (`tools/oci`), read back the way a registry
//! client reads them and run: every filter in both Wasm image variants, the gateway
//! image from its own files as its own user, the same images pushed to a real registry
//! (Debian's `docker-registry`) and pulled back by digest, reproducibility, the
//! Dockerfile's agreement with the image, and the release checksums.
//!
//! The reading side is independent of the writing side where it can be: layouts and
//! manifests are parsed with `oci-spec`'s types, archives are opened with the system's
//! `tar` and `gzip`, checksums are checked with `sha256sum -c`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use jwt_mint::{Key, jwks};
use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest};
use portcullis_envoy::{Envoy, EnvoyConfig, WasmFilter};
use portcullis_oci::wasm::{self, Variant};
use portcullis_oci::{Image, gateway, registry};
use serde_json::json;

const FILTERS: [&str; 5] = [
    "oidc",
    "jwt-auth",
    "tier-limiter",
    "header-forwarder",
    "key-auth",
];
const VERSION: &str = "0.1.0";

fn built_wasm(filter: &str) -> Vec<u8> {
    let path = portcullis_testbed::wasm(&filter.replace('-', "_"));
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (build the filters first: cargo xtask build)",
            path.display()
        )
    })
}

fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    let sum = sha2::Sha256::digest(bytes);
    let hex: String = sum.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// Runs a system tool and returns its standard output; a failure fails the test with
/// what it printed.
fn tool(cmd: &mut Command) -> Vec<u8> {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// An image layout as a registry client takes it in: the layout version, the one
/// manifest `index.json` names, and every blob fetched by digest with its size and
/// digest checked.
struct ReadImage {
    tag: String,
    digest: String,
    manifest: ImageManifest,
    config: Vec<u8>,
    /// Media type and bytes of each layer, in order.
    layers: Vec<(String, Vec<u8>)>,
}

fn blob(dir: &Path, digest: &str, size: u64) -> Vec<u8> {
    let (alg, hex) = digest
        .split_once(':')
        .unwrap_or_else(|| panic!("{digest}: not alg:hex"));
    assert_eq!(alg, "sha256");
    let bytes = std::fs::read(dir.join("blobs").join(alg).join(hex))
        .unwrap_or_else(|e| panic!("{digest} is not in {}: {e}", dir.display()));
    assert_eq!(bytes.len() as u64, size, "{digest}: size");
    assert_eq!(sha256(&bytes), digest, "content under its digest");
    bytes
}

fn read_layout(dir: &Path) -> ReadImage {
    let layout: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("oci-layout")).expect("oci-layout"))
            .expect("oci-layout is JSON");
    assert_eq!(layout["imageLayoutVersion"], "1.0.0");
    let index = ImageIndex::from_file(dir.join("index.json")).expect("index.json");
    assert_eq!(index.manifests().len(), 1, "one image per layout");
    let d = &index.manifests()[0];
    assert_eq!(
        d.media_type().to_string(),
        "application/vnd.oci.image.manifest.v1+json"
    );
    let tag = d
        .annotations()
        .as_ref()
        .and_then(|a| a.get("org.opencontainers.image.ref.name"))
        .expect("a ref name")
        .clone();
    let digest = d.digest().to_string();
    let bytes = blob(dir, &digest, d.size());
    let manifest = ImageManifest::from_reader(bytes.as_slice()).expect("a manifest");
    assert_eq!(manifest.schema_version(), 2);
    let c = manifest.config();
    let config = blob(dir, c.digest().as_ref(), c.size());
    let layers = manifest
        .layers()
        .iter()
        .map(|l| {
            (
                l.media_type().to_string(),
                blob(dir, l.digest().as_ref(), l.size()),
            )
        })
        .collect();
    ReadImage {
        tag,
        digest,
        manifest,
        config,
        layers,
    }
}

fn annotation(m: &ImageManifest, key: &str) -> Option<String> {
    m.annotations().as_ref().and_then(|a| a.get(key)).cloned()
}

/// The names `tar -t` lists in a gzip'd layer (the system's tar and gzip).
fn layer_names(layer: &Path) -> Vec<String> {
    String::from_utf8_lossy(&tool(Command::new("tar").arg("-tzf").arg(layer)))
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The module an image of `variant` carries, taken out as Istio's and Envoy Gateway's
/// fetchers take it, after checking the variant's shape.
fn module_of(img: &ReadImage, variant: Variant, scratch: &Path) -> Vec<u8> {
    let m = &img.manifest;
    match variant {
        Variant::Oci => {
            assert_eq!(
                m.config().media_type().to_string(),
                wasm::WASM_CONFIG_MEDIA_TYPE
            );
            let config: serde_json::Value =
                serde_json::from_slice(&img.config).expect("runtime config");
            assert_eq!(config["type"], "envoy_proxy");
            assert_eq!(config["abiVersions"], json!(["proxy_abi_version_0_2_1"]));
            // Istio and Envoy Gateway: exactly two layers, one of them the module.
            assert_eq!(img.layers.len(), 2);
            assert_eq!(img.layers[0].0, wasm::WASM_CONFIG_MEDIA_TYPE);
            assert_eq!(img.layers[0].1, img.config);
            assert_eq!(img.layers[1].0, wasm::WASM_LAYER_MEDIA_TYPE);
            img.layers[1].1.clone()
        }
        Variant::Compat => {
            assert_eq!(
                annotation(m, "module.wasm.image/variant").as_deref(),
                Some("compat")
            );
            assert_eq!(img.layers.len(), 1);
            assert_eq!(
                img.layers[0].0,
                "application/vnd.oci.image.layer.v1.tar+gzip"
            );
            let layer = scratch.join("layer.tar.gz");
            std::fs::write(&layer, &img.layers[0].1).expect("written");
            assert_eq!(layer_names(&layer), ["plugin.wasm"]);
            let config = ImageConfiguration::from_reader(img.config.as_slice()).expect("config");
            let tar = tool(Command::new("gzip").arg("-dc").arg(&layer));
            assert_eq!(config.rootfs().diff_ids(), &[sha256(&tar)], "diff_id");
            let out = scratch.join("rootfs");
            std::fs::create_dir_all(&out).expect("a dir");
            tool(
                Command::new("tar")
                    .arg("-xzf")
                    .arg(&layer)
                    .arg("-C")
                    .arg(&out),
            );
            std::fs::read(out.join("plugin.wasm")).expect("plugin.wasm")
        }
    }
}

/// Every file under `dir`, by relative path, with its bytes.
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
        for e in std::fs::read_dir(dir).expect("readable") {
            let p = e.expect("an entry").path();
            if p.is_dir() {
                walk(base, &p, out);
            } else {
                let rel = p.strip_prefix(base).expect("inside").display().to_string();
                out.push((rel, std::fs::read(&p).expect("readable")));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// Writes `image` as a layout directory and a tarball under `dir`, checks the tarball
/// (opened by the system's tar) holds exactly the directory's files, and reads the
/// directory back.
fn write_and_read(image: &Image, dir: &Path, name: &str) -> ReadImage {
    let layout = dir.join(name);
    image.write_dir(&layout).expect("layout written");
    let tarball = dir.join(format!("{name}.tar"));
    image.write_tar(&tarball).expect("tarball written");
    let unpacked = dir.join(format!("{name}.unpacked"));
    std::fs::create_dir_all(&unpacked).expect("a dir");
    tool(
        Command::new("tar")
            .arg("-xf")
            .arg(&tarball)
            .arg("-C")
            .arg(&unpacked),
    );
    assert!(
        files(&unpacked) == files(&layout),
        "{name}: the tarball holds the layout"
    );
    read_layout(&layout)
}

#[test]
fn every_filter_reads_back_from_both_variants_as_the_module_built() {
    let dir = TempDir::new();
    for filter in FILTERS {
        let wasm = built_wasm(filter);
        for variant in Variant::ALL {
            let name = format!("{filter}-{}", variant.name());
            let image = wasm::image(variant, filter, VERSION, &wasm).expect("an image");
            let read = write_and_read(&image, &dir.0, &name);
            assert_eq!(read.tag, VERSION);
            assert_eq!(read.digest, image.digest());
            assert_eq!(
                annotation(&read.manifest, "org.opencontainers.image.title").as_deref(),
                Some(filter)
            );
            let scratch = dir.0.join(format!("{name}.scratch"));
            std::fs::create_dir_all(&scratch).expect("a dir");
            let module = module_of(&read, variant, &scratch);
            assert!(module == wasm, "{name}: the module is the one built");
        }
    }
}

fn jwt_auth_config(key: &Key) -> serde_json::Value {
    json!({
        "providers": {"idp": {"issuer": "https://idp.test", "local_jwks": jwks(&[key]), "algorithms": ["ES256"],
            "consumer": {"id_claim": "sub"}}},
        "rules": [{"match": {"prefix": "/"}, "requires": {"provider": "idp"}}]
    })
}

fn gateway_yaml(
    upstream: std::net::SocketAddr,
    module: &Path,
    config: &serde_json::Value,
) -> String {
    format!(
        r#"
listeners: [{{ name: public, address: "127.0.0.1:{{PORT}}" }}]
admin: {{ address: "127.0.0.1:{{ADMIN}}" }}
access_log: "off"
services: [{{ name: echo, url: "http://{upstream}" }}]
filters:
  - {{ name: auth, wasm: "{}", config: {config} }}
routes: [{{ name: api, match: {{ paths: [/] }}, service: echo, filters: [auth] }}]
"#,
        module.display()
    )
}

/// 401 without a token, 200 with a valid one.
fn assert_guards(host: &str, base: &str, token: &str) {
    let r = send(base, "GET", "/orders/1", &[], b"").expect("an answer");
    assert_eq!(r.status, 401, "{host}: no token: {}", r.body);
    let r = send(
        base,
        "GET",
        "/orders/1",
        &[("authorization", &format!("Bearer {token}"))],
        b"",
    )
    .expect("an answer");
    assert_eq!(r.status, 200, "{host}: a valid token: {}", r.body);
}

#[test]
fn jwt_auth_pulled_from_either_variant_runs_in_the_gateway_and_in_envoy() {
    let dir = TempDir::new();
    let key = Key::ec256("k1");
    let token = key.sign(
        "ES256",
        json!({"iss": "https://idp.test", "sub": "u1", "exp": 4_102_444_800u64}),
    );
    let config = jwt_auth_config(&key);
    let upstream = echo();
    let wasm = built_wasm("jwt-auth");
    for variant in Variant::ALL {
        let name = format!("jwt-auth-{}", variant.name());
        let image = wasm::image(variant, "jwt-auth", VERSION, &wasm).expect("an image");
        let read = write_and_read(&image, &dir.0, &name);
        let scratch = dir.0.join(format!("{name}.scratch"));
        std::fs::create_dir_all(&scratch).expect("a dir");
        let module = scratch.join("pulled.wasm");
        std::fs::write(&module, module_of(&read, variant, &scratch)).expect("written");

        let gw = Gateway::start(&gateway_yaml(upstream, &module, &config));
        assert_guards(&format!("portcullis ({name})"), &gw.url(), &token);
        let envoy = Envoy::start(&EnvoyConfig::new(upstream).filter(WasmFilter::new(
            "auth",
            &module,
            &config.to_string(),
        )))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_guards(
            &format!("envoy ({name})"),
            &format!("http://{}", envoy.listener),
            &token,
        );
    }
}

#[test]
fn filter_images_are_reproducible() {
    let dir = TempDir::new();
    for filter in FILTERS {
        let wasm = built_wasm(filter);
        for variant in Variant::ALL {
            let first = wasm::image(variant, filter, VERSION, &wasm).expect("an image");
            let first_dir = dir.0.join(format!("{filter}-{}-1", variant.name()));
            first.write_dir(&first_dir).expect("written");
            // Past a second, so a wall-clock timestamp anywhere would show.
            std::thread::sleep(Duration::from_millis(1100));
            let second = wasm::image(variant, filter, VERSION, &wasm).expect("an image");
            let second_dir = dir.0.join(format!("{filter}-{}-2", variant.name()));
            second.write_dir(&second_dir).expect("written");
            assert_eq!(
                first.digest(),
                second.digest(),
                "{filter} {}",
                variant.name()
            );
            assert!(
                first.layout_tar().expect("tar") == second.layout_tar().expect("tar"),
                "{filter} {}: the same tarball",
                variant.name()
            );
            assert!(files(&first_dir) == files(&second_dir));
            eprintln!("{filter} ({}): {}", variant.name(), first.digest());
        }
    }
}

/// The gateway binary under test without its debug information (the dev profile's is
/// hundreds of MB): what the image holds is otherwise the same program.
fn stripped_gateway(dir: &Path) -> PathBuf {
    // Not `portcullis`: that is where the test writes the layout.
    let out = dir.join("portcullis.stripped");
    tool(
        Command::new("strip")
            .arg("--strip-debug")
            .arg("-o")
            .arg(&out)
            .arg(portcullis_testbed::built_binary("portcullis")),
    );
    out
}

fn gateway_filters() -> Vec<PathBuf> {
    FILTERS
        .iter()
        .map(|f| portcullis_testbed::wasm(&f.replace('-', "_")))
        .collect()
}

/// Where `program` is on this process's PATH; missing, the test fails saying which
/// Debian package has it.
fn on_path(program: &str, package: &str) -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{program} is missing: apt-get install {package}"))
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|v| v.split_whitespace().next())
            == Some("0")
    })
}

#[test]
fn the_gateway_image_runs_from_its_own_files_as_nonroot() {
    let dir = TempDir::new();
    let binary = stripped_gateway(&dir.0);
    let filters = gateway_filters();
    let image = gateway::image(VERSION, &binary, &filters).expect("the gateway image");
    let again = gateway::image(VERSION, &binary, &filters).expect("the gateway image");
    assert_eq!(image.digest(), again.digest(), "reproducible");
    let read = write_and_read(&image, &dir.0, "portcullis");

    // How a runtime starts it.
    let config = ImageConfiguration::from_reader(read.config.as_slice()).expect("config");
    assert_eq!(config.os().to_string(), "linux");
    let run = config.config().as_ref().expect("a run config");
    assert_eq!(run.user().as_deref(), Some("65532:65532"));
    assert_eq!(
        run.entrypoint().as_deref(),
        Some(&["/usr/local/bin/portcullis".to_owned()][..])
    );
    assert_eq!(
        run.cmd().as_deref(),
        Some(&["run", "--config", "/etc/portcullis/portcullis.yaml"].map(String::from)[..])
    );
    let env = run.env().clone().unwrap_or_default();
    assert!(env.contains(&"PORTCULLIS_CACHE_DIR=/var/cache/portcullis".to_owned()));

    // One layer; nothing in it writable by the runtime user but the cache (and /tmp).
    assert_eq!(read.layers.len(), 1);
    assert_eq!(
        read.layers[0].0,
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
    let layer = dir.0.join("gateway-layer.tar.gz");
    std::fs::write(&layer, &read.layers[0].1).expect("written");
    let tar = tool(Command::new("gzip").arg("-dc").arg(&layer));
    assert_eq!(config.rootfs().diff_ids(), &[sha256(&tar)], "diff_id");
    let listing = String::from_utf8_lossy(&tool(
        Command::new("tar")
            .args(["--numeric-owner", "-tvzf"])
            .arg(&layer),
    ))
    .into_owned();
    let mut seen = Vec::new();
    for line in listing.lines() {
        // drwxr-xr-x 65532/65532 0 1970-01-01 00:00 var/cache/portcullis/
        let cols: Vec<&str> = line.split_whitespace().collect();
        let (mode, owner, path) = (cols[0], cols[1], cols[cols.len() - 1]);
        seen.push(path.trim_end_matches('/').to_owned());
        assert_eq!(cols[3], "1970-01-01", "{line}: a fixed timestamp");
        match path {
            "var/cache/portcullis/" | "home/nonroot/" => assert_eq!(owner, "65532/65532", "{line}"),
            "tmp/" => assert_eq!((mode, owner), ("drwxrwxrwt", "0/0"), "{line}"),
            _ => {
                assert_eq!(owner, "0/0", "{line}");
                assert!(
                    !mode[4..].contains('w'),
                    "{line}: writable by group or others"
                );
            }
        }
    }
    for want in [
        "usr/local/bin/portcullis",
        "usr/local/lib/portcullis/filters/jwt_auth.wasm",
        "usr/local/lib/portcullis/filters/oidc.wasm",
        "usr/local/lib/portcullis/filters/tier_limiter.wasm",
        "usr/local/lib/portcullis/filters/header_forwarder.wasm",
        "usr/local/lib/portcullis/filters/key_auth.wasm",
        "lib64/ld-linux-x86-64.so.2",
        "lib/x86_64-linux-gnu/libc.so.6",
        "etc/passwd",
        "etc/portcullis",
        "var/cache/portcullis",
    ] {
        assert!(seen.iter().any(|s| s == want), "{want} in the image");
    }

    // Unpacked (owners kept when we are root), the binary's libraries all resolve
    // inside the image: the host's are not needed.
    let root = dir.0.join("rootfs");
    std::fs::create_dir_all(&root).expect("a dir");
    tool(
        Command::new("tar")
            .arg("-xzf")
            .arg(&layer)
            .arg("-C")
            .arg(&root),
    );
    let loader = root.join("lib64/ld-linux-x86-64.so.2");
    let libs = root.join("lib/x86_64-linux-gnu");
    let list = String::from_utf8_lossy(&tool(
        Command::new(&loader)
            .arg("--inhibit-cache")
            .arg("--library-path")
            .arg(&libs)
            .arg("--list")
            .arg(root.join("usr/local/bin/portcullis")),
    ))
    .into_owned();
    let resolved: Vec<&str> = list
        .lines()
        .filter_map(|l| l.split("=> ").nth(1))
        .map(|p| p.split(" (").next().unwrap_or(""))
        .collect();
    assert!(!resolved.is_empty(), "{list}");
    for p in &resolved {
        assert!(
            p.starts_with(&root.display().to_string()),
            "{p} is outside the image:\n{list}"
        );
    }

    // Started as the image says (its user when we can switch to it, its environment
    // with paths inside the unpacked root), it serves jwt-auth from its own files and
    // caches the compiled module where the image says.
    let key = Key::ec256("k1");
    let token = key.sign(
        "ES256",
        json!({"iss": "https://idp.test", "sub": "u1", "exp": 4_102_444_800u64}),
    );
    let inside = |p: &str| root.join(p.trim_start_matches('/'));
    let mut cmd = if is_root() {
        // By its full path: the command's PATH is the image's, which has no setpriv.
        let mut c = Command::new(on_path("setpriv", "util-linux"));
        c.args(["--reuid=65532", "--regid=65532", "--clear-groups", "--"])
            .arg(&loader);
        c
    } else {
        Command::new(&loader)
    };
    cmd.arg("--inhibit-cache")
        .arg("--library-path")
        .arg(&libs)
        .arg(inside(gateway::BINARY))
        .env_clear();
    for kv in &env {
        let (k, v) = kv.split_once('=').expect("KEY=value");
        let v = if k == "PORTCULLIS_CACHE_DIR" {
            inside(v).display().to_string()
        } else {
            v.to_owned()
        };
        cmd.env(k, v);
    }
    let upstream = echo();
    let module = inside(&format!("{}/jwt_auth.wasm", gateway::FILTERS_DIR));
    let gw = Gateway::try_start_with(
        cmd,
        &gateway_yaml(upstream, &module, &jwt_auth_config(&key)),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_guards("the gateway image", &gw.url(), &token);
    let cached = std::fs::read_dir(inside(gateway::CACHE_DIR))
        .expect("the cache dir")
        .count();
    assert!(
        cached > 0,
        "the compiled module is cached in $PORTCULLIS_CACHE_DIR:\n{}",
        gw.stderr_text()
    );
    if is_root() {
        let status = std::fs::read_to_string(format!("/proc/{}/status", gw.child.id()))
            .expect("the gateway's status");
        let uid = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|v| v.split_whitespace().next().map(str::to_owned));
        assert_eq!(uid.as_deref(), Some("65532"), "runs as nonroot");
    }
}

/// The `Dockerfile`'s final stage, instruction by instruction (continuations joined).
fn final_stage() -> Vec<String> {
    let joined = dockerfile().replace("\\\n", " ");
    let lines: Vec<String> = joined
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    let last_from = lines
        .iter()
        .rposition(|l| l.starts_with("FROM "))
        .expect("a FROM");
    lines[last_from..].to_vec()
}

#[test]
fn the_dockerfile_makes_the_image_the_xtask_makes() {
    let stage = final_stage();
    let has = |l: &str| stage.iter().any(|s| s == l);
    assert!(
        stage[0].starts_with("FROM gcr.io/distroless/cc-debian12:nonroot"),
        "{}",
        stage[0]
    );
    let run = gateway::run_config(VERSION);
    let quoted = |v: &[String]| {
        format!(
            "[{}]",
            v.iter()
                .map(|s| format!("\"{s}\""))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    assert!(
        has(&format!("ENTRYPOINT {}", quoted(&run.entrypoint))),
        "{stage:#?}"
    );
    assert!(has(&format!("CMD {}", quoted(&run.cmd))), "{stage:#?}");
    assert!(
        has(&format!("USER {}", run.user.as_deref().unwrap_or(""))),
        "{stage:#?}"
    );
    assert!(has(&format!(
        "ENV PORTCULLIS_CACHE_DIR={}",
        gateway::CACHE_DIR
    )));
    assert!(has(&format!(
        "COPY --from=build /out/portcullis {}",
        gateway::BINARY
    )));
    assert!(has(&format!(
        "COPY --from=build /out/filters/ {}/",
        gateway::FILTERS_DIR
    )));
    assert!(has(&format!(
        "COPY --from=build --chown=65532:65532 /out/cache {}",
        gateway::CACHE_DIR
    )));
    assert!(
        !stage.iter().any(|l| l.starts_with("RUN ")),
        "no RUN in the runtime stage: it has no shell"
    );
    // The build stage copies the five filters to what the runtime stage takes.
    let text = dockerfile();
    for f in FILTERS {
        let file = format!("{}.wasm", f.replace('-', "_"));
        assert!(
            text.contains(&format!("release/{file}")),
            "{f} in the image"
        );
    }
}

fn dockerfile() -> String {
    std::fs::read_to_string(portcullis_testbed::workspace_dir().join("Dockerfile"))
        .expect("the Dockerfile")
}

/// Debian's `docker-registry` (distribution 2.8) on a free loopback port, storing in a
/// directory of its own; stopped on drop.
struct Registry {
    child: std::process::Child,
    addr: String,
    _dir: TempDir,
}

impl Registry {
    fn start() -> Registry {
        let dir = TempDir::new();
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let config = dir.0.join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
                dir.0.join("storage").display()
            ),
        )
        .expect("written");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("docker-registry is missing ({e}): apt-get install docker-registry (cargo xtask test installs it)")
            });
        let reg = Registry {
            child,
            addr,
            _dir: dir,
        };
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            if send(&format!("http://{}", reg.addr), "GET", "/v2/", &[], b"")
                .is_ok_and(|r| r.status == 200)
            {
                return reg;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("docker-registry did not start on {}", reg.addr);
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn images_pushed_to_a_real_registry_pull_back_by_digest_byte_for_byte() {
    let reg = Registry::start();
    let options = registry::Options::default();
    let wasm = built_wasm("jwt-auth");
    for (variant, tag) in [
        (Variant::Compat, VERSION.to_owned()),
        (Variant::Oci, format!("{VERSION}-oci")),
    ] {
        let image = wasm::image(variant, "jwt-auth", VERSION, &wasm).expect("an image");
        let reference = format!("{}/portcullis/jwt-auth:{tag}", reg.addr);
        let pinned = registry::push(&image, &reference, &options)
            .unwrap_or_else(|e| panic!("push {reference}: {e}"));
        assert_eq!(
            pinned,
            format!("{}/portcullis/jwt-auth@{}", reg.addr, image.digest())
        );
        // Pushing again changes nothing.
        assert_eq!(
            registry::push(&image, &reference, &options).expect("pushed again"),
            pinned
        );

        let pulled = registry::pull_by_digest(&pinned, &options)
            .unwrap_or_else(|e| panic!("pull {pinned}: {e}"));
        assert!(
            pulled.manifest_bytes == image.manifest_bytes(),
            "{tag}: the manifest, byte for byte"
        );
        for (digest, bytes) in image.blobs() {
            assert!(
                pulled.blobs.get(digest).is_some_and(|b| b == bytes),
                "{tag}: {digest}"
            );
        }
        let module = match variant {
            Variant::Oci => pulled.blobs[&pulled.manifest.layers[1].digest].clone(),
            Variant::Compat => {
                let dir = TempDir::new();
                let layer = dir.0.join("layer.tar.gz");
                std::fs::write(&layer, &pulled.blobs[&pulled.manifest.layers[0].digest])
                    .expect("written");
                tool(
                    Command::new("tar")
                        .arg("-xzf")
                        .arg(&layer)
                        .arg("-C")
                        .arg(&dir.0),
                );
                std::fs::read(dir.0.join("plugin.wasm")).expect("plugin.wasm")
            }
        };
        assert!(module == wasm, "{tag}: the module pulled is the one built");

        // The registry's own answer to a plain GET by digest, as Istio's fetcher asks.
        let r = send(
            &format!("http://{}", reg.addr),
            "GET",
            &format!("/v2/portcullis/jwt-auth/manifests/{}", image.digest()),
            &[("accept", "application/vnd.oci.image.manifest.v1+json")],
            b"",
        )
        .expect("an answer");
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(
            r.headers.get_str("docker-content-digest"),
            Some(image.digest().as_str())
        );
        assert_eq!(r.body.as_bytes(), image.manifest_bytes());
    }
    // A digest the registry does not have is an error, not an empty image.
    let missing = format!("{}/portcullis/jwt-auth@{}", reg.addr, sha256(b"nothing"));
    assert!(registry::pull_by_digest(&missing, &options).is_err());
}

#[test]
fn the_release_directory_checks_against_its_sha256sums() {
    let dir = TempDir::new();
    let dist = dir.0.join("dist");
    let mut files = Vec::new();
    let mut images = Vec::new();
    for filter in FILTERS {
        let name = format!("{}.wasm", filter.replace('-', "_"));
        files.push((portcullis_testbed::wasm(&filter.replace('-', "_")), name));
        for variant in Variant::ALL {
            let image =
                wasm::image(variant, filter, VERSION, &built_wasm(filter)).expect("an image");
            images.push((
                format!("{filter}-{}-{VERSION}.oci.tar", variant.name()),
                image,
            ));
        }
    }
    files.push((
        stripped_gateway(&dir.0),
        "portcullis-x86_64-linux-gnu".to_owned(),
    ));
    let named: Vec<(String, &Image)> = images.iter().map(|(n, i)| (n.clone(), i)).collect();
    let text = portcullis_oci::dist::write_dist(&dist, &files, &named).expect("the release");
    assert_eq!(
        text,
        std::fs::read_to_string(dist.join("SHA256SUMS")).expect("SHA256SUMS")
    );

    // One line per file in the directory, SHA256SUMS aside.
    let mut listed: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_once("  ").map(|p| p.1))
        .collect();
    listed.sort_unstable();
    let mut present: Vec<String> = std::fs::read_dir(&dist)
        .expect("the release")
        .map(|e| {
            e.expect("an entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|n| n != "SHA256SUMS")
        .collect();
    present.sort();
    assert_eq!(listed, present);
    // Each filter's module and its two images, and the gateway.
    assert_eq!(present.len(), FILTERS.len() * 3 + 1, "{present:?}");

    let check = |dir: &Path| {
        Command::new("sha256sum")
            .args(["--check", "--strict", "SHA256SUMS"])
            .current_dir(dir)
            .output()
            .expect("sha256sum runs")
    };
    let ok = check(&dist);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );

    // A released layout tarball is the image: unpacked, it reads back with its digest.
    let (name, image) = &images[0];
    let unpacked = dir.0.join("unpacked");
    std::fs::create_dir_all(&unpacked).expect("a dir");
    tool(
        Command::new("tar")
            .arg("-xf")
            .arg(dist.join(name))
            .arg("-C")
            .arg(&unpacked),
    );
    assert_eq!(read_layout(&unpacked).digest, image.digest());

    // A changed artifact no longer checks.
    std::fs::write(dist.join("jwt_auth.wasm"), b"tampered").expect("written");
    let bad = check(&dist);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stdout).contains("jwt_auth.wasm: FAILED"));
}
