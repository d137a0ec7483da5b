//! Loading the embedded object (optionally with its maps pinned under bpffs so they outlive the
//! process), attaching it, and reading and writing its maps.

use std::{
    borrow::Borrow,
    net::{IpAddr, Ipv6Addr},
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, LpmTrie, Map, MapData, MapError, PerCpuArray, RingBuf, lpm_trie::Key},
    programs::{Xdp, XdpMode},
};
use gateway_ebpf::{
    ADDRESS_SLOTS_MAP, ALL_MAPS, ALLOWLIST_MAP, AddressSlot, BASELINE_PROGRAM_NAME, BLOCKLIST_MAP,
    BlockEntry, BlockReason, CONFIG_MAP, EVENTS_MAP, NETWORK_SLOTS_MAP, NetworkSlot,
    PREFIX_BLOCKLIST_MAP, PROGRAM_NAME, STATS_MAP, SourceKey, Verdict, XdpConfig,
};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::{
    XdpError,
    pins::ensure_pin_dir,
    slots::{PrefixList, Slots},
};

/// The XDP object compiled from gateway-ebpf by build.rs.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/gateway-ebpf"));

/// Per-verdict packet counts, summed over CPUs.
pub type Stats = [(Verdict, u64); Verdict::COUNT as usize];

/// The XDP program, loaded into the kernel, and its maps.
pub struct XdpProgram {
    ebpf: Ebpf,
    logger: Option<ProgramLogger>,
    /// What the program's slot maps hold (this is their only writer).
    slots: Slots,
}

/// Forwards the program's aya-log records to the `log` facade (and so to `tracing`).
pub type ProgramLogger = aya_log::EbpfLogger<&'static dyn log::Log>;

/// aya-log levels as the program's `AYA_LOG_LEVEL` global holds them.
const LOG_OFF: u8 = 0;
const LOG_DEBUG: u8 = 4;

impl XdpProgram {
    /// Loads the embedded object into the kernel (verified, not attached yet). With `pin_dir`, each
    /// map is pinned there, and maps already pinned there (by an earlier gateway) are reused, so
    /// blocks and counters survive restarts and upgrades. The program's log statements are pruned
    /// by the verifier unless `log` is set.
    pub fn load(pin_dir: Option<&Path>, log: bool) -> Result<Self, XdpError> {
        let level = if log { LOG_DEBUG } else { LOG_OFF };
        let mut loader = EbpfLoader::new();
        loader.override_global(aya_log::LEVEL, &level, false);
        let pins: Vec<(&'static str, PathBuf)> = match pin_dir {
            Some(dir) => {
                ensure_pin_dir(dir)?;
                ALL_MAPS
                    .iter()
                    .map(|name| (*name, dir.join(name)))
                    .collect()
            }
            None => Vec::new(),
        };
        for (name, path) in &pins {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(EBPF_OBJECT).map_err(|err| {
            if is_permission_error(&err) {
                XdpError::Permission(err)
            } else {
                XdpError::Load(err)
            }
        })?;
        program(&mut ebpf)?.load().map_err(XdpError::Program)?;
        let logger = if log {
            Some(
                aya_log::EbpfLogger::init(&mut ebpf)
                    .map_err(|err| XdpError::Log(err.to_string()))?,
            )
        } else {
            None
        };
        let mut program = Self {
            ebpf,
            logger,
            slots: Slots::new(),
        };
        if pin_dir.is_some() {
            // Pinned maps may hold entries already (or come from a build without slots).
            program.count_slots()?;
        }
        Ok(program)
    }

    /// Counts the entries of the lists into the slots and writes every slot.
    fn count_slots(&mut self) -> Result<(), XdpError> {
        let mut slots = Slots::new();
        for (key, entry) in self.blocklist()?.iter().collect::<Result<Vec<_>, _>>()? {
            slots.add_address(&key, entry.expires_at_ns, false);
        }
        for (key, _) in self
            .prefix_blocklist()?
            .iter()
            .collect::<Result<Vec<_>, _>>()?
        {
            slots.add_prefix(PrefixList::Blocked, prefix_of(&key));
        }
        for key in self.allowlist()?.keys().collect::<Result<Vec<_>, _>>()? {
            slots.add_prefix(PrefixList::Allowed, prefix_of(&key));
        }
        let (addresses, networks) = slots.all();
        let mut address_map = self.address_slots()?;
        for (index, slot) in addresses.iter().enumerate() {
            address_map.set(index as u32, slot, 0)?;
        }
        let mut network_map = self.network_slots()?;
        for (index, slot) in networks.iter().enumerate() {
            network_map.set(index as u32, slot, 0)?;
        }
        self.slots = slots;
        Ok(())
    }

    /// The reader of the program's log statements (with `log`), for a task to poll.
    pub fn take_logger(&mut self) -> Option<ProgramLogger> {
        self.logger.take()
    }

    pub fn program(&mut self) -> Result<&mut Xdp, XdpError> {
        program(&mut self.ebpf)
    }

    /// The pass-everything baseline program of the same object, loaded (for benchmarks).
    pub fn baseline_program(&mut self) -> Result<&mut Xdp, XdpError> {
        let baseline: &mut Xdp = self
            .ebpf
            .program_mut(BASELINE_PROGRAM_NAME)
            .ok_or(XdpError::Missing(BASELINE_PROGRAM_NAME))?
            .try_into()
            .map_err(XdpError::Program)?;
        if baseline.fd().is_err() {
            baseline.load().map_err(XdpError::Program)?;
        }
        Ok(baseline)
    }

    /// Attaches to `interface`; detached when the `Kernel` is dropped.
    pub fn attach(&mut self, interface: &str, mode: XdpMode) -> Result<(), XdpError> {
        self.program()?
            .attach(interface, mode)
            .map(drop)
            .map_err(|source| XdpError::Attach {
                interface: interface.to_owned(),
                source,
            })
    }

    pub fn config(&self) -> Result<XdpConfig, XdpError> {
        let config =
            Array::<_, XdpConfig>::try_from(self.map(CONFIG_MAP)?).map_err(XdpError::Map)?;
        config.get(&0, 0).map_err(XdpError::Map)
    }

    /// Replaces the program's settings; takes effect with the next packet.
    pub fn set_config(&mut self, config: &XdpConfig) -> Result<(), XdpError> {
        let mut array =
            Array::<_, XdpConfig>::try_from(self.map_mut(CONFIG_MAP)?).map_err(XdpError::Map)?;
        array.set(0, config, 0).map_err(XdpError::Map)
    }

    pub fn stats(&self) -> Result<Stats, XdpError> {
        sum_stats(&PerCpuArray::try_from(self.map(STATS_MAP)?).map_err(XdpError::Map)?)
    }

    /// Blocks `source` until monotonic time `expires_at_ns` (0 = until unblocked).
    pub fn block(
        &mut self,
        source: IpAddr,
        expires_at_ns: u64,
        reason: BlockReason,
    ) -> Result<(), XdpError> {
        // The program drops a blocklisted source without consulting the allowlist.
        if self.is_allowlisted(source)? {
            return Err(XdpError::Allowlisted(source));
        }
        let key = SourceKey::from(source);
        let entry = BlockEntry::new(expires_at_ns, reason);
        let existed = self.blocklist()?.get(&key, 0).is_ok();
        // The slot first: until the entry exists, it only costs a lookup that finds nothing.
        let (index, slot) = self.slots.add_address(&key, expires_at_ns, existed);
        self.address_slots()?.set(index, slot, 0)?;
        let inserted = self.blocklist()?.insert(key, entry, 0);
        if let Err(err) = inserted {
            if !existed {
                let (index, slot) = self.slots.remove_address(&key);
                self.address_slots()?.set(index, slot, 0)?;
            }
            return Err(XdpError::Map(err));
        }
        Ok(())
    }

    /// Every block: addresses from the blocklist, prefixes from the prefix blocklist.
    pub fn blocks(&mut self) -> Result<Vec<(IpNet, BlockEntry)>, XdpError> {
        let mut blocks = list_blocks(&self.blocklist()?)?;
        blocks.extend(list_prefix_blocks(&self.prefix_blocklist()?)?);
        Ok(blocks)
    }

    /// Removes entries that expired before `now_ns` and returns them (the program already ignores
    /// them; this frees their slots).
    pub fn sweep_expired(&mut self, now_ns: u64) -> Result<Vec<(IpNet, BlockEntry)>, XdpError> {
        let expired: Vec<_> = self
            .blocks()?
            .into_iter()
            .filter(|(_, entry)| !entry.is_active(now_ns))
            .collect();
        for (target, _) in &expired {
            self.remove_block(*target)?;
        }
        Ok(expired)
    }

    /// Blocks an address (`/32`, `/128`: the blocklist) or a prefix (the prefix blocklist) until
    /// `expires_at_ns` (0 = until unblocked).
    pub fn add_block(
        &mut self,
        target: IpNet,
        expires_at_ns: u64,
        reason: BlockReason,
    ) -> Result<(), XdpError> {
        if is_host(target) {
            self.block(target.addr(), expires_at_ns, reason)
        } else {
            self.block_prefix(target, expires_at_ns, reason)
        }
    }

    /// Removes the block of an address (`/32`, `/128`) or a prefix; `false` if there was none.
    pub fn remove_block(&mut self, target: IpNet) -> Result<bool, XdpError> {
        if is_host(target) {
            let key = SourceKey::from(target.addr());
            if !removed(self.blocklist()?.remove(&key))? {
                return Ok(false);
            }
            // The slot after the entry: until then it only costs a lookup.
            let (index, slot) = self.slots.remove_address(&key);
            self.address_slots()?.set(index, slot, 0)?;
        } else {
            if !removed(self.prefix_blocklist()?.remove(&prefix_key(target)))? {
                return Ok(false);
            }
            let changed = self.slots.remove_prefix(PrefixList::Blocked, target);
            self.write_network_slots(changed)?;
        }
        Ok(true)
    }

    /// Makes the allowlist exactly `prefixes`: entries a pinned map kept from an earlier
    /// configuration go, new ones come.
    pub fn set_allowlist(&mut self, prefixes: &[IpNet]) -> Result<(), XdpError> {
        let current = self.allowed()?;
        for stale in current.iter().filter(|prefix| !prefixes.contains(prefix)) {
            self.disallow(*stale)?;
        }
        for prefix in prefixes {
            if !current.contains(&prefix.trunc()) {
                self.allow(*prefix)?;
            }
        }
        Ok(())
    }

    /// The allowlisted prefixes.
    pub fn allowed(&mut self) -> Result<Vec<IpNet>, XdpError> {
        self.allowlist()?
            .keys()
            .map(|key| key.map(|key| prefix_of(&key)).map_err(XdpError::Map))
            .collect()
    }

    /// Takes `prefix` off the allowlist; `false` if it was not on it.
    pub fn disallow(&mut self, prefix: IpNet) -> Result<bool, XdpError> {
        // The entry before its slots: a slot still counting it only costs a lookup.
        if !removed(self.allowlist()?.remove(&prefix_key(prefix)))? {
            return Ok(false);
        }
        let changed = self.slots.remove_prefix(PrefixList::Allowed, prefix);
        self.write_network_slots(changed)?;
        Ok(true)
    }

    /// Never drops sources in `prefix`. The program consults the allowlist only before a prefix
    /// or rate drop, so the blocks of addresses inside `prefix` are removed here.
    pub fn allow(&mut self, prefix: IpNet) -> Result<(), XdpError> {
        // The slots first: until the entry exists, they only cost a lookup that finds nothing.
        let changed = self.slots.add_prefix(PrefixList::Allowed, prefix);
        self.write_network_slots(changed)?;
        self.allowlist()?.insert(&prefix_key(prefix), 1, 0)?;
        let inside: Vec<SourceKey> = self
            .blocklist()?
            .keys()
            .filter(|key| key.as_ref().is_ok_and(|key| prefix.contains(&key.ip())))
            .collect::<Result<_, _>>()?;
        for key in inside {
            self.remove_block(IpNet::from(key.ip()))?;
        }
        Ok(())
    }

    /// Whether `source` lies in an allowlisted prefix.
    pub fn is_allowlisted(&self, source: IpAddr) -> Result<bool, XdpError> {
        let trie = LpmTrie::<_, [u8; 16], u32>::try_from(self.map(ALLOWLIST_MAP)?)
            .map_err(XdpError::Map)?;
        match trie.get(&Key::new(128, SourceKey::from(source).addr), 0) {
            Ok(_) => Ok(true),
            Err(err) if is_not_found(&err) => Ok(false),
            Err(err) => Err(XdpError::Map(err)),
        }
    }

    /// Blocks a whole range.
    pub fn block_prefix(
        &mut self,
        prefix: IpNet,
        expires_at_ns: u64,
        reason: BlockReason,
    ) -> Result<(), XdpError> {
        let changed = self.slots.add_prefix(PrefixList::Blocked, prefix);
        self.write_network_slots(changed)?;
        self.prefix_blocklist()?.insert(
            &prefix_key(prefix),
            BlockEntry::new(expires_at_ns, reason),
            0,
        )?;
        Ok(())
    }

    fn write_network_slots(&mut self, changed: Vec<(u32, NetworkSlot)>) -> Result<(), XdpError> {
        if changed.is_empty() {
            return Ok(());
        }
        let mut map = self.network_slots()?;
        for (index, slot) in changed {
            map.set(index, slot, 0)?;
        }
        Ok(())
    }

    /// The ring buffer of rate-limit events, for a reader task (can be taken once).
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, XdpError> {
        let map = self
            .ebpf
            .take_map(EVENTS_MAP)
            .ok_or(XdpError::Missing(EVENTS_MAP))?;
        RingBuf::try_from(map).map_err(XdpError::Map)
    }

    fn blocklist(&mut self) -> Result<HashMap<&mut MapData, SourceKey, BlockEntry>, XdpError> {
        HashMap::try_from(self.map_mut(BLOCKLIST_MAP)?).map_err(XdpError::Map)
    }

    fn prefix_blocklist(
        &mut self,
    ) -> Result<LpmTrie<&mut MapData, [u8; 16], BlockEntry>, XdpError> {
        LpmTrie::try_from(self.map_mut(PREFIX_BLOCKLIST_MAP)?).map_err(XdpError::Map)
    }

    fn allowlist(&mut self) -> Result<LpmTrie<&mut MapData, [u8; 16], u32>, XdpError> {
        LpmTrie::try_from(self.map_mut(ALLOWLIST_MAP)?).map_err(XdpError::Map)
    }

    fn address_slots(&mut self) -> Result<Array<&mut MapData, AddressSlot>, XdpError> {
        Array::try_from(self.map_mut(ADDRESS_SLOTS_MAP)?).map_err(XdpError::Map)
    }

    fn network_slots(&mut self) -> Result<Array<&mut MapData, NetworkSlot>, XdpError> {
        Array::try_from(self.map_mut(NETWORK_SLOTS_MAP)?).map_err(XdpError::Map)
    }

    fn map(&self, name: &'static str) -> Result<&Map, XdpError> {
        self.ebpf.map(name).ok_or(XdpError::Missing(name))
    }

    fn map_mut(&mut self, name: &'static str) -> Result<&mut Map, XdpError> {
        self.ebpf.map_mut(name).ok_or(XdpError::Missing(name))
    }
}

/// Whether `target` is one address, kept in the blocklist rather than the prefix blocklist.
fn is_host(target: IpNet) -> bool {
    target.prefix_len() == target.max_prefix_len()
}

/// The LPM key of a prefix: IPv4 prefixes become v4-mapped IPv6 prefixes (/n -> /96+n), as the
/// program looks sources up.
pub fn prefix_key(prefix: IpNet) -> Key<[u8; 16]> {
    match prefix.trunc() {
        IpNet::V4(net) => Key::new(
            96 + u32::from(net.prefix_len()),
            SourceKey::from(net.network()).addr,
        ),
        IpNet::V6(net) => Key::new(u32::from(net.prefix_len()), net.network().octets()),
    }
}

/// Counters and blocks read from the pinned maps (`gateway xdp status`), whether or not a gateway
/// is running.
pub fn pinned_status(dir: &Path) -> Result<(Stats, Vec<(IpNet, BlockEntry)>), XdpError> {
    let open = |name: &str| MapData::from_pin(dir.join(name)).map_err(XdpError::Map);
    let stats = PerCpuArray::try_from(Map::PerCpuArray(open(STATS_MAP)?)).map_err(XdpError::Map)?;
    let blocklist = HashMap::try_from(Map::HashMap(open(BLOCKLIST_MAP)?)).map_err(XdpError::Map)?;
    let prefixes =
        LpmTrie::try_from(Map::LpmTrie(open(PREFIX_BLOCKLIST_MAP)?)).map_err(XdpError::Map)?;
    let mut blocks = list_blocks(&blocklist)?;
    blocks.extend(list_prefix_blocks(&prefixes)?);
    Ok((sum_stats(&stats)?, blocks))
}

/// Each verdict's counter, summed over CPUs.
fn sum_stats<T: Borrow<MapData>>(stats: &PerCpuArray<T, u64>) -> Result<Stats, XdpError> {
    let mut totals = Verdict::ALL.map(|verdict| (verdict, 0));
    for (verdict, total) in &mut totals {
        *total = stats
            .get(&(*verdict as u32), 0)
            .map_err(XdpError::Map)?
            .iter()
            .sum();
    }
    Ok(totals)
}

fn list_blocks<T: Borrow<MapData>>(
    blocklist: &HashMap<T, SourceKey, BlockEntry>,
) -> Result<Vec<(IpNet, BlockEntry)>, XdpError> {
    blocklist
        .iter()
        .map(|item| {
            item.map(|(key, entry)| (IpNet::from(key.ip()), entry))
                .map_err(XdpError::Map)
        })
        .collect()
}

fn list_prefix_blocks<T: Borrow<MapData>>(
    trie: &LpmTrie<T, [u8; 16], BlockEntry>,
) -> Result<Vec<(IpNet, BlockEntry)>, XdpError> {
    trie.iter()
        .map(|item| {
            item.map(|(key, entry)| (prefix_of(&key), entry))
                .map_err(XdpError::Map)
        })
        .collect()
}

/// The prefix an LPM key stands for (the inverse of [`prefix_key`]).
fn prefix_of(key: &Key<[u8; 16]>) -> IpNet {
    let v6 = Ipv6Addr::from(key.data());
    let len = key.prefix_len().min(128) as u8;
    let prefix = match v6.to_ipv4_mapped() {
        Some(v4) if len >= 96 => Ipv4Net::new(v4, len - 96).map(IpNet::V4),
        _ => Ipv6Net::new(v6, len).map(IpNet::V6),
    };
    prefix.map_or_else(|_| IpNet::from(IpAddr::V6(v6)), |prefix| prefix.trunc())
}

/// Whether a removal removed something (`false`: there was nothing to remove).
fn removed(result: Result<(), MapError>) -> Result<bool, XdpError> {
    match result {
        Ok(()) => Ok(true),
        Err(err) if is_not_found(&err) => Ok(false),
        Err(err) => Err(XdpError::Map(err)),
    }
}

/// Whether a removal failed only because the key was absent: aya reports it as `KeyNotFound` for
/// hash maps and as the raw ENOENT for LPM tries.
fn is_not_found(err: &MapError) -> bool {
    match err {
        MapError::KeyNotFound => true,
        MapError::SyscallError(err) => err.io_error.kind() == std::io::ErrorKind::NotFound,
        _ => false,
    }
}

fn program(ebpf: &mut Ebpf) -> Result<&mut Xdp, XdpError> {
    ebpf.program_mut(PROGRAM_NAME)
        .ok_or(XdpError::Missing(PROGRAM_NAME))?
        .try_into()
        .map_err(XdpError::Program)
}

/// Whether loading failed for lack of privileges (EPERM/EACCES anywhere in the error chain).
fn is_permission_error(err: &aya::EbpfError) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::PermissionDenied
        {
            return true;
        }
        source = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_prefixes_become_v4_mapped() {
        let key = prefix_key("198.51.100.77/24".parse().unwrap());
        assert_eq!(key.prefix_len(), 120);
        assert_eq!(
            key.data(),
            SourceKey::from("198.51.100.0".parse::<IpAddr>().unwrap()).addr
        );
        let key = prefix_key("2001:db8::1/48".parse().unwrap());
        assert_eq!(key.prefix_len(), 48);
        assert_eq!(key.data()[..6], [0x20, 0x01, 0x0d, 0xb8, 0, 0]);
        assert!(key.data()[6..].iter().all(|b| *b == 0));
    }

    #[test]
    fn a_prefix_read_back_from_its_key_is_the_prefix_written() {
        for text in [
            "198.51.100.0/24",
            "2001:db8::/48",
            "fd00:7::/64",
            "0.0.0.0/0",
            "::/0",
        ] {
            let prefix: IpNet = text.parse().unwrap();
            assert_eq!(prefix_of(&prefix_key(prefix)), prefix, "{text}");
        }
    }
}
