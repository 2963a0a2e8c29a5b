//! Interception behaviour, the same for every mechanism: each test runs once per mode in
//! `MODES`. A pod (namespace + cgroup v2) with HAProxy as the sidecar (uid 1337) and an
//! upstream server behind a veth; the `x-sidecar` header HAProxy adds proves the path.

use interceptor_tests::pod::{Mode, Pod, APP_UID, POD_IP, PROXY_UID, SERVER_IP, SERVER_IP2};
use interceptor_tests::require_root;

/// The mechanisms under test: every test below runs against each.
const MODES: &[Mode] = &[Mode::Iptables, Mode::Ebpf];

fn pod_with_sidecar(mode: Mode, flags: &[&str]) -> Pod {
    let mut pod = Pod::new(mode).expect("pod");
    pod.intercept(flags).expect("init");
    pod.start_sidecar().expect("sidecar");
    pod
}

#[test]
fn outbound_goes_through_the_sidecar_to_the_original_destination() {
    require_root!();
    for &mode in MODES {
        let mut pod = pod_with_sidecar(mode, &[]);
        pod.start_upstream(8080).unwrap();
        let r = pod
            .get_from_pod(APP_UID, APP_UID, &format!("http://{SERVER_IP}:8080/who"))
            .unwrap();
        assert_eq!(r.status, 200, "{mode:?}: {r:?}");
        assert_eq!(r.sidecar.as_deref(), Some("outbound"), "{mode:?}: {r:?}");
        assert_eq!(
            r.body, "upstream\n",
            "{mode:?}: the original destination answered"
        );
    }
}

#[test]
fn inbound_reaches_the_capture_port() {
    require_root!();
    for &mode in MODES {
        let mut pod = pod_with_sidecar(mode, &[]);
        pod.start_app_server(8081).unwrap();
        let r = pod
            .get_from_outside(&format!("http://{POD_IP}:8081/who"))
            .unwrap();
        assert_eq!(r.sidecar.as_deref(), Some("inbound"), "{mode:?}: {r:?}");
        assert_eq!(r.body, "app\n", "{mode:?}");
    }
}

#[test]
fn excluded_inbound_ports_bypass_the_sidecar() {
    require_root!();
    for &mode in MODES {
        // 15020 is in the default -d list; 8082 is added.
        let mut pod = pod_with_sidecar(mode, &["-d", "15090,15021,15020,8082"]);
        for port in [15020, 8082] {
            pod.start_app_server(port).unwrap();
            let r = pod
                .get_from_outside(&format!("http://{POD_IP}:{port}/who"))
                .unwrap();
            assert_eq!(
                (r.status, r.sidecar.as_deref()),
                (200, None),
                "{mode:?} port {port}: {r:?}"
            );
        }
        // A port that is not excluded still goes to the sidecar.
        pod.start_app_server(8083).unwrap();
        let r = pod
            .get_from_outside(&format!("http://{POD_IP}:8083/who"))
            .unwrap();
        assert_eq!(r.sidecar.as_deref(), Some("inbound"), "{mode:?}: {r:?}");
    }
}

#[test]
fn excluded_outbound_ports_and_cidrs_bypass_the_sidecar() {
    require_root!();
    for &mode in MODES {
        let mut pod = pod_with_sidecar(mode, &["-o", "8090", "-x", &format!("{SERVER_IP2}/32")]);
        pod.start_upstream(8080).unwrap();
        pod.start_upstream(8090).unwrap();
        let r = pod
            .get_from_pod(APP_UID, APP_UID, &format!("http://{SERVER_IP}:8090/who"))
            .unwrap();
        assert_eq!(
            (r.status, r.sidecar.as_deref()),
            (200, None),
            "{mode:?} -o: {r:?}"
        );
        let r = pod
            .get_from_pod(APP_UID, APP_UID, &format!("http://{SERVER_IP2}:8080/who"))
            .unwrap();
        assert_eq!(
            (r.status, r.sidecar.as_deref()),
            (200, None),
            "{mode:?} -x: {r:?}"
        );
        let r = pod
            .get_from_pod(APP_UID, APP_UID, &format!("http://{SERVER_IP}:8080/who"))
            .unwrap();
        assert_eq!(r.sidecar.as_deref(), Some("outbound"), "{mode:?}: {r:?}");
    }
}

#[test]
fn outbound_include_cidrs_limit_what_is_redirected() {
    require_root!();
    for &mode in MODES {
        let mut pod = pod_with_sidecar(mode, &["-i", &format!("{SERVER_IP2}/32")]);
        pod.start_upstream(8080).unwrap();
        let r = pod
            .get_from_pod(APP_UID, APP_UID, &format!("http://{SERVER_IP2}:8080/who"))
            .unwrap();
        assert_eq!(r.sidecar.as_deref(), Some("outbound"), "{mode:?}: {r:?}");
        let r = pod
            .get_from_pod(APP_UID, APP_UID, &format!("http://{SERVER_IP}:8080/who"))
            .unwrap();
        assert_eq!(
            (r.status, r.sidecar.as_deref()),
            (200, None),
            "{mode:?}: {r:?}"
        );
    }
}

#[test]
fn the_sidecars_own_traffic_bypasses() {
    require_root!();
    for &mode in MODES {
        let mut pod = pod_with_sidecar(mode, &[]);
        pod.start_upstream(8080).unwrap();
        let url = format!("http://{SERVER_IP}:8080/who");
        // By uid, and by gid alone.
        for (uid, gid) in [(PROXY_UID, PROXY_UID), (APP_UID, PROXY_UID)] {
            let r = pod.get_from_pod(uid, gid, &url).unwrap();
            assert_eq!(
                (r.status, r.sidecar.as_deref()),
                (200, None),
                "{mode:?} {uid}:{gid}: {r:?}"
            );
        }
    }
}

#[test]
fn cleanup_restores_direct_traffic() {
    require_root!();
    for &mode in MODES {
        let mut pod = pod_with_sidecar(mode, &[]);
        pod.start_upstream(8080).unwrap();
        pod.start_app_server(8081).unwrap();
        let url = format!("http://{SERVER_IP}:8080/who");
        assert_eq!(
            pod.get_from_pod(APP_UID, APP_UID, &url)
                .unwrap()
                .sidecar
                .as_deref(),
            Some("outbound")
        );
        pod.cleanup().unwrap();
        let r = pod.get_from_pod(APP_UID, APP_UID, &url).unwrap();
        assert_eq!(
            (r.status, r.sidecar.as_deref()),
            (200, None),
            "{mode:?}: {r:?}"
        );
        let r = pod
            .get_from_outside(&format!("http://{POD_IP}:8081/who"))
            .unwrap();
        assert_eq!(
            (r.status, r.sidecar.as_deref()),
            (200, None),
            "{mode:?}: {r:?}"
        );
    }
}

#[test]
fn a_second_init_keeps_interception_working() {
    require_root!();
    for &mode in MODES {
        let mut pod = pod_with_sidecar(mode, &[]);
        pod.start_upstream(8080).unwrap();
        pod.start_app_server(8081).unwrap();
        pod.intercept(&[]).expect("second init");
        let r = pod
            .get_from_pod(APP_UID, APP_UID, &format!("http://{SERVER_IP}:8080/who"))
            .unwrap();
        assert_eq!(r.sidecar.as_deref(), Some("outbound"), "{mode:?}: {r:?}");
        let r = pod
            .get_from_outside(&format!("http://{POD_IP}:8081/who"))
            .unwrap();
        assert_eq!(r.sidecar.as_deref(), Some("inbound"), "{mode:?}: {r:?}");
    }
}

#[test]
fn the_app_calling_its_own_pod_address_stays_local() {
    require_root!();
    for &mode in MODES {
        let mut pod = pod_with_sidecar(mode, &[]);
        pod.start_app_server(8081).unwrap();
        let url = format!("http://{POD_IP}:8081/who");
        // As istio's `-o lo -m owner ! --uid-owner 1337 -j RETURN`: no sidecar either way,
        // whether from the pod address or from 127.0.0.6 (inbound passthrough's source).
        for source in ["", "--interface 127.0.0.6"] {
            let out = pod
                .run_as(
                    APP_UID,
                    APP_UID,
                    &format!("curl -sS -m 5 -D - {source} {url}"),
                )
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                text.starts_with("HTTP/1.0 200"),
                "{mode:?} {source}: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                !text.to_ascii_lowercase().contains("x-sidecar"),
                "{mode:?} {source}: {text}"
            );
        }
    }
}
