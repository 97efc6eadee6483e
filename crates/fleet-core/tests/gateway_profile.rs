//! Profiles with `[gateway]`: how devices are grouped behind gateways, the topics each style
//! gives, and how many MQTT sessions a cohort (or a slice of it) needs.

use std::path::Path;

use fleet_core::DeviceId;
use fleet_core::load::{Cohort, EmbeddedSource, load_fleet};

const FW: &str =
    "name = \"fw\"\n[[versions]]\nversion = \"1.0.0\"\nimage_size_kb = 1\nboot_s = 0.1\n";

fn cohort(gateway: &str, count: u32) -> Cohort {
    let profile = format!(
        "name = \"child\"\n[identity]\ndevice_id = \"c-{{id:04}}\"\n[reporting]\ninterval = \"60s\"\n\
         [firmware]\nmodel = \"fw.toml\"\nversion = \"1.0.0\"\n{gateway}"
    );
    let scenario = format!(
        "name = \"s\"\nduration = \"1m\"\n[[cohorts]]\nname = \"other\"\nprofile = \"other.toml\"\ncount = 5\n\
         [[cohorts]]\nname = \"edge\"\nprofile = \"child.toml\"\ncount = {count}\n"
    );
    let other = "name = \"other\"\n[identity]\ndevice_id = \"o-{id}\"\ntelemetry_topic = \"o/{device_id}\"\n\
                 [reporting]\ninterval = \"1s\"\n[firmware]\nmodel = \"fw.toml\"\nversion = \"1.0.0\"\n\
                 [mqtt]\nlast_will = false\n[commands]\nenabled = []\n";
    let files: Vec<(&'static str, &'static str)> = vec![
        ("s.toml", Box::leak(scenario.into_boxed_str())),
        ("child.toml", Box::leak(profile.into_boxed_str())),
        ("other.toml", other),
        ("fw.toml", FW),
    ];
    let files = Box::leak(files.into_boxed_slice());
    let fleet = load_fleet(&EmbeddedSource(files), Path::new("s.toml")).expect("valid");
    fleet.cohorts[1].clone()
}

fn render(t: &fleet_core::template::Template, c: &Cohort, id: u32) -> String {
    let mut device = Vec::new();
    c.render_device_id(DeviceId(id), &mut device);
    let g = c.gateway_of(DeviceId(id)).expect("a child");
    let mut gw = Vec::new();
    c.render_gateway_id(g.index, &mut gw);
    t.render(&c.child_vars(DeviceId(id), &device, &gw))
}

#[test]
fn devices_are_grouped_behind_gateways_in_id_order() {
    let c = cohort("[gateway]\nchildren = 10\n", 25);
    assert_eq!(c.first_device, 5);
    assert_eq!(c.gateways(), 3);
    assert_eq!(c.sessions(), 3);
    let g = c.gateway_of(DeviceId(5 + 23)).expect("a child");
    assert_eq!((g.index, g.first, g.children), (2, DeviceId(25), 5));
    assert!(g.has_child(DeviceId(29)) && !g.has_child(DeviceId(24)));
    assert_eq!(c.gateway_of(DeviceId(5 + 9)).map(|g| g.index), Some(0));
    // A slice of the cohort needs the sessions of the gateways it touches.
    assert_eq!(c.sessions_in(5..30), 3);
    assert_eq!(c.sessions_in(14..16), 2);
    assert_eq!(c.sessions_in(16..16), 0);
}

#[test]
fn plain_topics_sit_under_the_gateway_and_its_status_is_retained() {
    let c = cohort("[gateway]\nchildren = 10\n", 25);
    let p = &c.profile;
    let g = p.gateway.as_ref().expect("[gateway]");
    let id = &p.identity;
    assert_eq!(
        render(&id.telemetry_topic, &c, 17),
        "edge-gw-0001/c-0017/telemetry"
    );
    let status = id.status_topic.as_ref().expect("a status topic");
    assert_eq!(render(status, &c, 17), "edge-gw-0001/c-0017/status");
    assert!(id.status_offline_topic.is_none() && id.retain_status && g.retain_status);
    let response = id
        .response_topic
        .as_ref()
        .expect("commands are on by default");
    assert_eq!(render(response, &c, 17), "edge-gw-0001/c-0017/cmd/response");
    let mut gw = Vec::new();
    c.render_gateway_id(1, &mut gw);
    let vars = c.gateway_vars(1, &gw);
    assert_eq!(g.client_id.render(&vars), "edge-gw-0001");
    assert_eq!(g.status_topic.render(&vars), "edge-gw-0001/status");
    assert_eq!(g.will_topic.render(&vars), "edge-gw-0001/status");
    let filter = g.command_filter.as_ref().expect("commands on");
    assert_eq!(filter.render(&vars), "edge-gw-0001/+/cmd");
}

#[test]
fn sparkplug_topics_follow_its_namespace_without_retained_statuses() {
    let c = cohort(
        "[commands]\nenabled = [\"ping\"]\n[gateway]\nchildren = 10\ntopics = \"sparkplug\"\ngroup = \"plant-7\"\nid = \"edge-{gateway_index}\"\n",
        25,
    );
    let p = &c.profile;
    let g = p.gateway.as_ref().expect("[gateway]");
    let id = &p.identity;
    assert_eq!(
        render(&id.telemetry_topic, &c, 17),
        "spBv1.0/plant-7/DDATA/edge-1/c-0017"
    );
    let birth = id.status_topic.as_ref().expect("DBIRTH");
    let death = id.status_offline_topic.as_ref().expect("DDEATH");
    assert_eq!(
        render(birth, &c, 17),
        "spBv1.0/plant-7/DBIRTH/edge-1/c-0017"
    );
    assert_eq!(
        render(death, &c, 17),
        "spBv1.0/plant-7/DDEATH/edge-1/c-0017"
    );
    assert!(!id.retain_status && !g.retain_status);
    let vars = c.gateway_vars(1, b"edge-1");
    assert_eq!(
        g.status_topic.render(&vars),
        "spBv1.0/plant-7/NBIRTH/edge-1"
    );
    assert_eq!(g.will_topic.render(&vars), "spBv1.0/plant-7/NDEATH/edge-1");
    let filter = g.command_filter.as_ref().expect("commands on");
    assert_eq!(filter.render(&vars), "spBv1.0/plant-7/DCMD/edge-1/+");
}

#[test]
fn a_cohort_without_mqtt_has_no_gateways() {
    let c = cohort("[gateway]\nchildren = 10\n[commands]\nenabled = []\n", 25);
    let mut off = c.clone();
    off.mqtt = false;
    assert_eq!(off.gateways(), 0);
    assert_eq!(off.sessions(), 0);
    assert!(off.gateway_of(DeviceId(6)).is_none());
    assert!(
        c.profile
            .gateway
            .as_ref()
            .is_some_and(|g| g.command_filter.is_none())
    );
}
