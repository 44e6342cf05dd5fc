//! The Kubernetes manifests in `deploy/` against the real command line: every
//! `reprise` container's arguments go through the same parser and validation as
//! `reprise serve` (and `reprise route`), and the ports, probes and pool selector
//! they imply must agree with those arguments. A manifest cannot drift from the CLI.

use crate::cli::{Cli, Command};
use crate::config::ServeConfig;
use clap::Parser;
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

/// Every YAML document of every manifest, with its file name.
fn documents() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(deploy_dir())
        .expect("deploy/ exists")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifests in deploy/");
    for f in files {
        let text = std::fs::read_to_string(&f).expect("read manifest");
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let v = Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("{}: not valid YAML: {e}", f.display()));
            if !v.is_null() {
                out.push((f.display().to_string(), v));
            }
        }
    }
    out
}

/// `$(NAME)` references replaced as Kubernetes would, from the container's `env`
/// (downward-API values get a stand-in).
fn expand(arg: &str, env: &BTreeMap<String, String>) -> String {
    let mut s = arg.to_string();
    for (k, v) in env {
        s = s.replace(&format!("$({k})"), v);
    }
    assert!(!s.contains("$("), "unresolved variable in {arg:?}");
    s
}

fn container_env(c: &Value) -> BTreeMap<String, String> {
    c["env"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let name = e["name"].as_str().expect("env name").to_string();
            let value = e["value"].as_str().unwrap_or("10.0.0.7").to_string();
            (name, value)
        })
        .collect()
}

fn port_of(endpoint: &str) -> Option<u16> {
    endpoint.rsplit_once(':').and_then(|(_, p)| p.parse().ok())
}

/// Every `mountPath/key` a Deployment mounts from a ConfigMap, written to a temp file
/// with the ConfigMap's text.
fn mounted_files(docs: &[(String, Value)]) -> BTreeMap<String, PathBuf> {
    let maps: BTreeMap<&str, &Value> = docs
        .iter()
        .filter(|(_, d)| d["kind"] == "ConfigMap")
        .filter_map(|(_, d)| Some((d["metadata"]["name"].as_str()?, &d["data"])))
        .collect();
    let mut out = BTreeMap::new();
    for (_, d) in docs.iter().filter(|(_, d)| d["kind"] == "Deployment") {
        let spec = &d["spec"]["template"]["spec"];
        for v in spec["volumes"].as_array().into_iter().flatten() {
            let (Some(vol), Some(map)) = (v["name"].as_str(), v["configMap"]["name"].as_str())
            else {
                continue;
            };
            let Some(data) = maps.get(map).and_then(|d| d.as_object()) else {
                panic!("volume {vol} mounts the missing ConfigMap {map}");
            };
            for c in spec["containers"].as_array().into_iter().flatten() {
                for m in c["volumeMounts"].as_array().into_iter().flatten() {
                    if m["name"] != vol {
                        continue;
                    }
                    let dir = m["mountPath"].as_str().expect("mountPath");
                    for (key, text) in data {
                        let tmp = std::env::temp_dir()
                            .join(format!("reprise-deploy-{}-{map}-{key}", std::process::id()));
                        std::fs::write(&tmp, text.as_str().unwrap_or_default()).expect("temp file");
                        out.insert(format!("{dir}/{key}"), tmp);
                    }
                }
            }
        }
    }
    out
}

#[test]
fn every_manifest_parses_and_its_reprise_arguments_are_valid() {
    let docs = documents();
    let kinds: Vec<&str> = docs
        .iter()
        .filter_map(|(_, d)| d["kind"].as_str())
        .collect();
    for want in ["Deployment", "InferencePool", "ConfigMap", "Service"] {
        assert!(kinds.contains(&want), "deploy/ has no {want}: {kinds:?}");
    }
    let mut serve_pods: Vec<(BTreeMap<String, String>, u16)> = Vec::new();
    let mounted = mounted_files(&docs);
    for (file, d) in &docs {
        assert!(
            d["apiVersion"].is_string() && d["kind"].is_string(),
            "{file}"
        );
        if d["kind"] != "Deployment" {
            continue;
        }
        let pod = &d["spec"]["template"];
        let labels: BTreeMap<String, String> =
            serde_json::from_value(pod["metadata"]["labels"].clone()).expect("pod labels");
        let selector: BTreeMap<String, String> =
            serde_json::from_value(d["spec"]["selector"]["matchLabels"].clone()).expect("selector");
        assert!(
            selector.iter().all(|(k, v)| labels.get(k) == Some(v)),
            "{file}: selector"
        );
        for c in pod["spec"]["containers"].as_array().expect("containers") {
            if c["command"][0] != "reprise" {
                continue;
            }
            let env = container_env(c);
            let args: Vec<String> = c["args"]
                .as_array()
                .expect("args")
                .iter()
                .map(|a| {
                    let a = expand(a.as_str().expect("string arg"), &env);
                    // A file the pod mounts from a ConfigMap is the ConfigMap's text.
                    match a.split_once('=') {
                        Some((k, path)) if mounted.contains_key(path) => {
                            format!("{k}={}", mounted[path].display())
                        }
                        _ => a,
                    }
                })
                .collect();
            let argv = std::iter::once("reprise".to_string()).chain(args);
            let cli = Cli::try_parse_from(argv)
                .unwrap_or_else(|e| panic!("{file}: arguments rejected by reprise's parser: {e}"));
            let ports: Vec<u16> = c["ports"]
                .as_array()
                .expect("container ports")
                .iter()
                .map(|p| p["containerPort"].as_u64().expect("port") as u16)
                .collect();
            match cli.command {
                Command::Serve(a) => {
                    let cfg = ServeConfig::from_args(&a)
                        .unwrap_or_else(|e| panic!("{file}: reprise serve refuses: {e}"));
                    assert!(
                        ports.contains(&a.http.port),
                        "{file}: HTTP port {} not exposed",
                        a.http.port
                    );
                    let kv = cfg
                        .kv_events
                        .as_ref()
                        .expect("pods for llm-d publish KV events");
                    for ep in std::iter::once(&kv.endpoint).chain(kv.replay_endpoint.as_ref()) {
                        let p = port_of(ep).expect("a fixed port for Kubernetes");
                        assert!(ports.contains(&p), "{file}: {ep} not exposed");
                    }
                    for probe in ["readinessProbe", "livenessProbe", "startupProbe"] {
                        if c[probe].is_object() {
                            assert_eq!(c[probe]["httpGet"]["path"], "/health", "{file}: {probe}");
                        }
                    }
                    serve_pods.push((labels.clone(), a.http.port));
                }
                Command::Route(a) => {
                    let cfg = reprise_route::config::RouteConfig::from_args(&a)
                        .unwrap_or_else(|e| panic!("{file}: reprise route refuses: {e}"));
                    assert!(
                        ports.contains(&a.http.port),
                        "{file}: HTTP port {} not exposed",
                        a.http.port
                    );
                    assert!(
                        !cfg.workers.is_empty() || cfg.workers_file.is_some(),
                        "{file}: no workers"
                    );
                }
                other => panic!("{file}: unexpected subcommand {other:?}"),
            }
        }
    }
    assert!(!serve_pods.is_empty(), "no reprise serve pods in deploy/");
    // The pool selects those pods on the port they serve.
    for (file, d) in docs.iter().filter(|(_, d)| d["kind"] == "InferencePool") {
        let sel: BTreeMap<String, String> =
            serde_json::from_value(d["spec"]["selector"]["matchLabels"].clone())
                .expect("pool selector");
        let port = d["spec"]["targetPorts"][0]["number"]
            .as_u64()
            .expect("target port") as u16;
        assert!(
            serve_pods
                .iter()
                .any(|(labels, p)| *p == port && sel.iter().all(|(k, v)| labels.get(k) == Some(v))),
            "{file}: the pool selects no reprise pod on port {port}"
        );
    }
    // The picker's configuration is YAML too, with reprise's block size.
    for (file, d) in docs
        .iter()
        .filter(|(_, d)| d["data"]["epp-config.yaml"].is_string())
    {
        for (_, text) in d["data"].as_object().expect("data").iter() {
            let cfg: Value = serde_yaml_ng::from_str(text.as_str().expect("text"))
                .unwrap_or_else(|e| panic!("{file}: embedded config: {e}"));
            assert_eq!(cfg["kind"], "EndpointPickerConfig", "{file}");
            let text = text.as_str().unwrap_or_default();
            assert!(text.contains("blockSizeTokens: 16"), "{file}: block size");
        }
    }
}
