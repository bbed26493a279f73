//! The kernel links a running agent holds, as the tamper tests look them up.

use std::{path::PathBuf, process::Command};

use crate::Agent;

impl Agent {
    /// The ids of the cgroup links this agent holds open whose `bpftool` attach type is
    /// `attach_type` (`cgroup_udp4_sendmsg`, `cgroup_inet_ingress`), from its fdinfo.
    pub fn held_links(&self, attach_type: &str) -> Vec<u32> {
        let fdinfo = PathBuf::from(format!("/proc/{}/fdinfo", self.pid()));
        let mut ids: Vec<u32> = std::fs::read_dir(&fdinfo)
            .expect("the agent's fdinfo")
            .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
            .filter_map(|info| {
                let field = |name: &str| {
                    info.lines()
                        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                        .map(str::trim)
                        .map(str::to_owned)
                };
                (field("link_type")? == "cgroup").then_some(())?;
                field("link_id")?.parse::<u32>().ok()
            })
            .filter(|id| {
                let out = Command::new("bpftool")
                    .args(["-j", "link", "show", "id", &id.to_string()])
                    .output()
                    .expect("bpftool");
                let link: serde_json::Value =
                    serde_json::from_slice(&out.stdout).unwrap_or_default();
                link["attach_type"] == attach_type
            })
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// Detaches, as an intruder with `bpftool` would, the one cgroup link of `attach_type`
    /// this agent holds; returns its id.
    pub fn detach_held_link(&self, attach_type: &str) -> u32 {
        let links = self.held_links(attach_type);
        let [link] = links[..] else {
            panic!("one {attach_type} link held by the agent: {links:?}");
        };
        let detach = Command::new("bpftool")
            .args(["link", "detach", "id", &link.to_string()])
            .output()
            .expect("bpftool");
        assert!(
            detach.status.success(),
            "bpftool link detach: {}",
            String::from_utf8_lossy(&detach.stderr)
        );
        link
    }
}
