//! Table tests: each case states the istio-iptables settings istio-cni would program for
//! the pod (by istio's config names), and checks our arguments say exactly that.

use super::annotations as ann;
use super::*;

const STATUS_JSON: &str = r#"{"initContainers":["istio-validation"],"containers":["istio-proxy"],"volumes":["istio-envoy"],"imagePullSecrets":null,"revision":"default"}"#;

fn pod(ns: &str, annotations: Option<&[(&str, &str)]>) -> PodInfo {
    PodInfo {
        name: "webapp-6c8d".into(),
        namespace: ns.into(),
        uid: "3f1e".into(),
        annotations: annotations.map(|a| {
            a.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        }),
    }
}

/// An injected pod: the status annotation plus `extra`.
fn injected(extra: &[(&str, &str)]) -> PodInfo {
    let mut a: Vec<(&str, &str)> = vec![(ann::STATUS, STATUS_JSON)];
    a.extend_from_slice(extra);
    pod("istioinaction", Some(&a))
}

/// istio's config field names, in the order our arguments carry them, with the flag each
/// is given by.
const FIELDS: &[(&str, &str)] = &[
    ("PROXY_PORT", "-p"),
    ("INBOUND_CAPTURE_PORT", "-z"),
    ("PROXY_UID", "-u"),
    ("INBOUND_INTERCEPTION_MODE", "-m"),
    ("OUTBOUND_IPRANGES_INCLUDE", "-i"),
    ("OUTBOUND_IPRANGES_EXCLUDE", "-x"),
    ("INBOUND_PORTS_INCLUDE", "-b"),
    ("INBOUND_PORTS_EXCLUDE", "-d"),
    ("PROXY_GID", "-g"),
    ("OUTBOUND_PORTS_INCLUDE", "-q"),
    ("OUTBOUND_PORTS_EXCLUDE", "-o"),
    ("KUBE_VIRT_INTERFACES", "-k"),
    ("EXCLUDE_INTERFACES", "-c"),
    ("REDIRECT_DNS", "--redirect-dns"),
    ("CAPTURE_ALL_DNS", "--capture-all-dns"),
    ("DROP_INVALID", "--drop-invalid"),
    ("DUAL_STACK", "--dual-stack"),
];

/// What istio-cni programs for an injected pod with no redirect annotations
/// (`config.DefaultConfig()` plus `NewRedirect`'s defaults).
const ISTIO_CNI_DEFAULTS: &[(&str, &str)] = &[
    ("PROXY_PORT", "15001"),
    ("INBOUND_CAPTURE_PORT", "15006"),
    ("PROXY_UID", "1337"),
    ("INBOUND_INTERCEPTION_MODE", "REDIRECT"),
    ("OUTBOUND_IPRANGES_INCLUDE", "*"),
    ("OUTBOUND_IPRANGES_EXCLUDE", ""),
    ("INBOUND_PORTS_INCLUDE", "*"),
    ("INBOUND_PORTS_EXCLUDE", "15020,15021,15090"),
    ("PROXY_GID", "1337"),
    ("OUTBOUND_PORTS_INCLUDE", ""),
    ("OUTBOUND_PORTS_EXCLUDE", "15020"),
    ("KUBE_VIRT_INTERFACES", ""),
    ("EXCLUDE_INTERFACES", ""),
    ("REDIRECT_DNS", "false"),
    ("CAPTURE_ALL_DNS", "false"),
    ("DROP_INVALID", "false"),
    ("DUAL_STACK", "false"),
];

/// The istio-iptables arguments for istio-cni's defaults with `changes` applied.
fn istio_args(changes: &[(&str, &str)]) -> Vec<String> {
    let mut settings: BTreeMap<&str, &str> = ISTIO_CNI_DEFAULTS.iter().copied().collect();
    for (k, v) in changes {
        assert!(settings.insert(k, v).is_some(), "unknown field {k}");
    }
    let mut out = Vec::new();
    for (field, flag) in FIELDS {
        let v = settings[field];
        if flag.starts_with("--") {
            out.push(format!("{flag}={v}"));
        } else {
            out.push(flag.to_string());
            out.push(v.to_string());
        }
    }
    out
}

fn mesh_args(d: Decision) -> Vec<String> {
    match d {
        Decision::Mesh(i) => i.args,
        Decision::Skip(why) => panic!("skipped: {why}"),
    }
}

#[test]
fn annotated_pods_get_istio_cnis_settings() {
    // (what, annotations besides the status, istio settings that differ from the defaults)
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a [(&'a str, &'a str)]);
    let cases: &[Case] = &[
        ("only the status annotation", &[], &[]),
        (
            "what the injector writes with CNI on (statusPort 15020)",
            &[
                (ann::INTERCEPTION_MODE, "REDIRECT"),
                (ann::INCLUDE_OUTBOUND_IP_RANGES, "*"),
                (ann::INCLUDE_INBOUND_PORTS, "*"),
                (ann::EXCLUDE_INBOUND_PORTS, "15020"),
                ("istio.io/rev", "default"),
                ("kubectl.kubernetes.io/default-container", "webapp"),
            ],
            &[],
        ),
        (
            "include and exclude IP ranges",
            &[
                (ann::INCLUDE_OUTBOUND_IP_RANGES, "127.0.0.0/8"),
                (ann::EXCLUDE_OUTBOUND_IP_RANGES, "10.0.0.0/8"),
            ],
            &[
                ("OUTBOUND_IPRANGES_INCLUDE", "127.0.0.0/8"),
                ("OUTBOUND_IPRANGES_EXCLUDE", "10.0.0.0/8"),
            ],
        ),
        (
            "include and exclude ports",
            &[
                (ann::INCLUDE_INBOUND_PORTS, "1111,2222"),
                (ann::EXCLUDE_INBOUND_PORTS, "3333,4444"),
                (ann::EXCLUDE_OUTBOUND_PORTS, "5555,6666"),
            ],
            &[
                ("INBOUND_PORTS_INCLUDE", "1111,2222"),
                ("INBOUND_PORTS_EXCLUDE", "3333,4444,15020,15021,15090"),
                ("OUTBOUND_PORTS_EXCLUDE", "5555,6666"),
            ],
        ),
        (
            "excluded inbound ports already holding the proxy's",
            &[(ann::EXCLUDE_INBOUND_PORTS, "15090,8080")],
            &[("INBOUND_PORTS_EXCLUDE", "15090,8080,15020,15021")],
        ),
        (
            "no inbound capture",
            &[(ann::INCLUDE_INBOUND_PORTS, "")],
            &[("INBOUND_PORTS_INCLUDE", "")],
        ),
        (
            "outbound ports always captured",
            &[(ann::INCLUDE_OUTBOUND_PORTS, "8080,9090")],
            &[("OUTBOUND_PORTS_INCLUDE", "8080,9090")],
        ),
        (
            "TPROXY",
            &[(ann::INTERCEPTION_MODE, "TPROXY")],
            &[("INBOUND_INTERCEPTION_MODE", "TPROXY")],
        ),
        (
            "excluded interfaces",
            &[(ann::EXCLUDE_INTERFACES, "eth1,net1")],
            &[("EXCLUDE_INTERFACES", "eth1,net1")],
        ),
        (
            "kubevirt interfaces (deprecated name)",
            &[(ann::KUBEVIRT_INTERFACES, "k6t-eth0")],
            &[("KUBE_VIRT_INTERFACES", "k6t-eth0")],
        ),
        (
            "reroute-virtual-interfaces wins over kubevirtInterfaces, which is then not checked",
            &[
                (ann::KUBEVIRT_INTERFACES, "0-not-checked"),
                (ann::REROUTE_VIRTUAL_INTERFACES, "tap0"),
            ],
            &[("KUBE_VIRT_INTERFACES", "tap0")],
        ),
        (
            "custom status port, as the injector writes it",
            &[
                (ann::STATUS_PORT, "15555"),
                (ann::EXCLUDE_INBOUND_PORTS, "15555"),
            ],
            &[("INBOUND_PORTS_EXCLUDE", "15555,15020,15021,15090")],
        ),
        (
            "custom status port, annotated by hand",
            &[(ann::STATUS_PORT, "15555")],
            &[("INBOUND_PORTS_EXCLUDE", "15020,15021,15090,15555")],
        ),
        (
            "status port 0 (no status server)",
            &[(ann::STATUS_PORT, "0")],
            &[],
        ),
        ("inject: true", &[(ann::INJECT, "true")], &[]),
        (
            "inject: a value ParseBool rejects is ignored",
            &[(ann::INJECT, "yes")],
            &[],
        ),
        (
            "sidecar template named explicitly",
            &[(ann::INJECT_TEMPLATES, "sidecar,spire")],
            &[],
        ),
    ];
    let conf = PluginConf::default();
    for (name, annotations, changes) in cases {
        let got = mesh_args(decide(&injected(annotations), &conf).unwrap());
        assert_eq!(got, istio_args(changes), "{name}");
    }
}

#[test]
fn node_settings_reach_the_arguments() {
    let conf = PluginConf {
        mode: Mechanism::Ebpf,
        redirect_dns: true,
        dual_stack: true,
        drop_invalid: true,
        proxy_uid: 1000670000,
        proxy_gid: 1000670001,
        ..PluginConf::default()
    };
    let Decision::Mesh(i) = decide(&injected(&[]), &conf).unwrap() else {
        panic!("not meshed");
    };
    assert_eq!(i.mode, Mechanism::Ebpf);
    assert_eq!(
        i.args,
        istio_args(&[
            ("PROXY_UID", "1000670000"),
            ("PROXY_GID", "1000670001"),
            ("REDIRECT_DNS", "true"),
            ("CAPTURE_ALL_DNS", "true"),
            ("DROP_INVALID", "true"),
            ("DUAL_STACK", "true"),
        ])
    );
}

#[test]
fn socket_fast_path_off_reaches_ebpf_pods_only() {
    let ebpf_off = PluginConf {
        mode: Mechanism::Ebpf,
        namespaces: vec!["istioinaction".into()],
        socket_fast_path: false,
        ..PluginConf::default()
    };
    // Annotated or not, an eBPF pod gets the switch, after istio-cni's arguments.
    for p in [injected(&[]), pod("istioinaction", None)] {
        let args = mesh_args(decide(&p, &ebpf_off).unwrap());
        assert_eq!(
            args.last().map(String::as_str),
            Some("--no-socket-fast-path")
        );
        assert_eq!(
            args.iter()
                .filter(|a| a.contains("socket-fast-path"))
                .count(),
            1
        );
    }
    assert_eq!(
        mesh_args(decide(&injected(&[]), &ebpf_off).unwrap())[..istio_args(&[]).len()],
        istio_args(&[])[..]
    );
    // With the fast path on, or in the iptables mode (which has none), nothing is added.
    let ebpf_on = PluginConf {
        socket_fast_path: true,
        ..ebpf_off.clone()
    };
    let iptables_off = PluginConf {
        mode: Mechanism::Iptables,
        ..ebpf_off.clone()
    };
    for conf in [ebpf_on, iptables_off] {
        assert_eq!(
            mesh_args(decide(&injected(&[]), &conf).unwrap()),
            istio_args(&[])
        );
    }
}

#[test]
fn pods_without_annotations_get_the_injector_defaults() {
    let conf = PluginConf {
        namespaces: vec!["istioinaction".into()],
        ..PluginConf::default()
    };
    let args = mesh_args(decide(&pod("istioinaction", None), &conf).unwrap());
    let istio_init = [
        "-p",
        "15001",
        "-z",
        "15006",
        "-u",
        "1337",
        "-m",
        "REDIRECT",
        "-i",
        "*",
        "-x",
        "",
        "-b",
        "*",
        "-d",
        "15090,15021,15020",
    ];
    assert_eq!(args[..16], istio_init);
    assert_eq!(
        args[16..],
        [
            "-g",
            "1337",
            "-q",
            "",
            "-o",
            "",
            "-k",
            "",
            "-c",
            "",
            "--redirect-dns=false",
            "--capture-all-dns=false",
            "--drop-invalid=false",
            "--dual-stack=false"
        ]
    );
    // the first sixteen are the same shape for an annotated pod
    let annotated = mesh_args(decide(&injected(&[]), &conf).unwrap());
    assert_eq!(annotated[..14], istio_init[..14]);
}

#[test]
fn skip_reasons() {
    let conf = PluginConf {
        namespaces: vec![
            "istioinaction".into(),
            "kube-system".into(),
            "legacy".into(),
        ],
        exclude_namespaces: vec![
            "kube-system".into(),
            "interceptor-system".into(),
            "legacy".into(),
        ],
        ..PluginConf::default()
    };
    let no_kube_system = PluginConf {
        namespaces: vec!["kube-system".into()],
        ..PluginConf::default()
    };
    let status = |s: &'static str| (ann::STATUS, s);
    let cases: Vec<(&str, PodInfo, &PluginConf, &str)> = vec![
        (
            "no pod name",
            PodInfo {
                name: String::new(),
                ..injected(&[])
            },
            &conf,
            "not a Kubernetes pod",
        ),
        (
            "no namespace",
            pod("", Some(&[status(STATUS_JSON)])),
            &conf,
            "not a Kubernetes pod",
        ),
        (
            "kube-system, annotated",
            pod("kube-system", Some(&[status(STATUS_JSON)])),
            &conf,
            "namespace kube-system is excluded",
        ),
        (
            "kube-system even when listed and not excluded",
            pod("kube-system", None),
            &no_kube_system,
            "namespace kube-system is excluded",
        ),
        (
            "agent namespace",
            pod("interceptor-system", Some(&[status(STATUS_JSON)])),
            &conf,
            "namespace interceptor-system is excluded",
        ),
        (
            "excluded wins over namespaces",
            pod("legacy", None),
            &conf,
            "namespace legacy is excluded",
        ),
        (
            "no annotations, namespace not listed",
            pod("default", None),
            &conf,
            "not in namespaces",
        ),
        (
            "inject false",
            injected(&[(ann::INJECT, "false")]),
            &conf,
            "sidecar.istio.io/inject is \"false\"",
        ),
        (
            "inject 0",
            injected(&[(ann::INJECT, "0")]),
            &conf,
            "is \"0\"",
        ),
        (
            "inject F",
            injected(&[(ann::INJECT, "F")]),
            &conf,
            "is \"F\"",
        ),
        (
            "inject false beats a malformed status",
            pod(
                "istioinaction",
                Some(&[(ann::INJECT, "false"), status("garbage")]),
            ),
            &conf,
            "is \"false\"",
        ),
        (
            "annotated but not injected",
            pod("istioinaction", Some(&[("app", "webapp")])),
            &conf,
            "no sidecar.istio.io/status annotation",
        ),
        (
            "empty annotations",
            pod("istioinaction", Some(&[])),
            &conf,
            "no sidecar.istio.io/status annotation",
        ),
        (
            "status without istio-proxy",
            pod(
                "istioinaction",
                Some(&[status(r#"{"containers":["envoy"]}"#)]),
            ),
            &conf,
            "no istio-proxy container",
        ),
        (
            "status with null lists",
            pod(
                "istioinaction",
                Some(&[status(r#"{"initContainers":null,"containers":null}"#)]),
            ),
            &conf,
            "no istio-proxy container",
        ),
        (
            "istio-init present",
            pod(
                "istioinaction",
                Some(&[status(
                    r#"{"initContainers":["istio-init"],"containers":["istio-proxy"]}"#,
                )]),
            ),
            &conf,
            "istio-init",
        ),
        (
            "gateway",
            injected(&[(ann::INJECT_TEMPLATES, "gateway")]),
            &conf,
            "injects a gateway",
        ),
        (
            "interception NONE",
            injected(&[(ann::INTERCEPTION_MODE, "NONE")]),
            &conf,
            "interceptionMode is NONE",
        ),
        (
            "NONE with bad other annotations is still a skip",
            injected(&[
                (ann::INTERCEPTION_MODE, "NONE"),
                (ann::EXCLUDE_INBOUND_PORTS, "x"),
            ]),
            &conf,
            "NONE",
        ),
    ];
    for (name, p, c, want) in cases {
        match decide(&p, c) {
            Ok(Decision::Skip(why)) => {
                assert!(why.contains(want), "{name}: {why:?} lacks {want:?}")
            }
            other => panic!("{name}: {other:?}"),
        }
    }
    // Native sidecars: istio-proxy among the init containers is meshed.
    let native = pod(
        "istioinaction",
        Some(&[status(
            r#"{"initContainers":["istio-validation","istio-proxy"],"containers":null}"#,
        )]),
    );
    assert!(matches!(decide(&native, &conf), Ok(Decision::Mesh(_))));
}

#[test]
fn bad_annotation_values_are_errors_naming_them() {
    let cases: &[(&str, &str)] = &[
        (ann::INTERCEPTION_MODE, "redirect"),
        (ann::INCLUDE_OUTBOUND_IP_RANGES, "10.0.0.0/33"),
        (ann::INCLUDE_OUTBOUND_IP_RANGES, "10.0.0.0"),
        (ann::EXCLUDE_OUTBOUND_IP_RANGES, "*"),
        (ann::EXCLUDE_OUTBOUND_IP_RANGES, "10.0.0.0/8, 10.1.0.0/16"),
        (ann::INCLUDE_INBOUND_PORTS, "http"),
        (ann::EXCLUDE_INBOUND_PORTS, "80,,90"),
        (ann::EXCLUDE_INBOUND_PORTS, "8080,"),
        (ann::INCLUDE_OUTBOUND_PORTS, "70000"),
        (ann::EXCLUDE_OUTBOUND_PORTS, "-1"),
        (ann::EXCLUDE_INTERFACES, "eth 0"),
        (ann::KUBEVIRT_INTERFACES, "0bad"),
        (ann::REROUTE_VIRTUAL_INTERFACES, "a,,b"),
        (ann::STATUS_PORT, "status"),
    ];
    for (name, value) in cases {
        let e = decide(&injected(&[(name, value)]), &PluginConf::default()).unwrap_err();
        assert_eq!((e.annotation, e.value.as_str()), (*name, *value));
        assert!(
            e.to_string().contains(name) && e.to_string().contains(value),
            "{e}"
        );
    }
    let e = decide(
        &pod("istioinaction", Some(&[(ann::STATUS, "true")])),
        &PluginConf::default(),
    )
    .unwrap_err();
    assert_eq!((e.annotation, e.value.as_str()), (ann::STATUS, "true"));
}

#[test]
fn pod_from_invocation() {
    let args = CniArgs::parse(
        "IgnoreUnknown=1;K8S_POD_NAME=app;K8S_POD_NAMESPACE=istioinaction;K8S_POD_UID=1234",
    )
    .unwrap();
    let conf =
        NetConf::parse(br#"{"cniVersion":"0.4.0","name":"podman","type":"interceptor"}"#).unwrap();
    assert_eq!(
        PodInfo::from_invocation(&args, &conf),
        PodInfo {
            name: "app".into(),
            namespace: "istioinaction".into(),
            uid: "1234".into(),
            annotations: None,
        }
    );
    let conf = NetConf::parse(
        br#"{"cniVersion":"1.0.0","name":"k8s","type":"interceptor",
             "runtimeConfig":{"io.kubernetes.cri.pod-annotations":{}}}"#,
    )
    .unwrap();
    assert_eq!(
        PodInfo::from_invocation(&args, &conf).annotations,
        Some(BTreeMap::new())
    );
}
