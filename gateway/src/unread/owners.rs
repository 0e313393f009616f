//! Which gateway flushes a group's unread counts, so that all of a group's increments
//! merge on one node: rendezvous hashing of the group id over the live gateways. Each
//! gateway renews its own entry in the store's gateway registry (with an expiry) and
//! reads the live set back; when a gateway dies or joins, ownership of its share of the
//! groups moves. Ownership only decides where merging happens: correctness never depends
//! on it (a flush is a compare-and-set on the counted seq), so two gateways that briefly
//! disagree both flush, and one of them finds the work done.

use std::sync::RwLock;

/// The live gateways, as this one last read them.
pub struct Owners {
    me: String,
    live: RwLock<Vec<String>>,
}

impl Owners {
    pub fn new(me: String) -> Self {
        Self {
            live: RwLock::new(vec![me.clone()]),
            me,
        }
    }

    pub fn me(&self) -> &str {
        &self.me
    }

    /// Replaces the live set (this gateway always counts as live).
    pub fn set_live(&self, mut gateways: Vec<String>) {
        if !gateways.contains(&self.me) {
            gateways.push(self.me.clone());
        }
        *self.live.write().expect("owners lock") = gateways;
    }

    /// The gateway that flushes `group`.
    pub fn owner(&self, group: &str) -> String {
        let live = self.live.read().expect("owners lock");
        live.iter()
            .max_by_key(|gateway| (weight(gateway, group), gateway.as_str()))
            .cloned()
            .unwrap_or_else(|| self.me.clone())
    }
}

/// FNV-1a over gateway and group: stable across processes, builds and platforms, so
/// every gateway computes the same owner.
fn weight(gateway: &str, group: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in gateway.bytes().chain([0]).chain(group.bytes()) {
        hash ^= byte as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    // FNV's low bits mix poorly for short keys; a final avalanche spreads them.
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^ (hash >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owners(me: &str, live: &[&str]) -> Owners {
        let owners = Owners::new(me.into());
        owners.set_live(live.iter().map(|g| g.to_string()).collect());
        owners
    }

    #[test]
    fn every_gateway_agrees_on_each_groups_owner() {
        let live = ["gw-a", "gw-b", "gw-c"];
        let views: Vec<Owners> = live.iter().map(|me| owners(me, &live)).collect();
        for g in 0..200 {
            let group = format!("group-{g}");
            let first = views[0].owner(&group);
            assert!(views.iter().all(|v| v.owner(&group) == first));
        }
    }

    #[test]
    fn groups_spread_over_gateways_and_only_a_dead_ones_share_moves() {
        let all = owners("gw-a", &["gw-a", "gw-b", "gw-c"]);
        let groups: Vec<String> = (0..3000).map(|g| format!("group-{g}")).collect();
        let before: Vec<String> = groups.iter().map(|g| all.owner(g)).collect();
        for gw in ["gw-a", "gw-b", "gw-c"] {
            let share = before.iter().filter(|o| *o == gw).count();
            assert!((800..1200).contains(&share), "{gw} owns {share} of 3000");
        }
        let without_c = owners("gw-a", &["gw-a", "gw-b"]);
        for (group, owner) in groups.iter().zip(&before) {
            let now = without_c.owner(group);
            if owner == "gw-c" {
                assert_ne!(now, "gw-c");
            } else {
                assert_eq!(&now, owner, "{group} moved though its owner lives");
            }
        }
    }

    #[test]
    fn alone_a_gateway_owns_everything() {
        let alone = Owners::new("solo".into());
        assert_eq!(alone.owner("any"), "solo");
        alone.set_live(vec![]);
        assert_eq!(alone.owner("any"), "solo");
    }
}
