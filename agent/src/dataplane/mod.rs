//! The eBPF service dataplane: loads Skiff's programs (`dataplane-ebpf/programs`), pins their
//! maps, attaches the socket programs to a cgroup v2, and exposes the service map as a
//! [`ServiceTable`].
//!
//! # Where the object comes from
//!
//! The programs are built with nightly for `bpfel-unknown-none` by `cargo xtask build-ebpf`, which
//! writes `target/bpf/skiff-dataplane.o`. So that a plain (stable) workspace build never needs the
//! nightly toolchain, the agent reads that object **at run time** by default ([`ObjectSource`]):
//! `$SKIFF_EBPF_OBJECT`, else `skiff-dataplane.o` next to the running executable, else the
//! workspace's `target/bpf/skiff-dataplane.o`. With the `embed-ebpf` feature the object is
//! compiled into the binary instead (`include_bytes!`; the build then requires the object to
//! exist — `cargo xtask build-ebpf` first).
//!
//! # Pinning and restarts
//!
//! Maps are pinned by name under [`Config::pin_dir`] (`/sys/fs/bpf/skiff/` by default; bpffs is
//! mounted at `/sys/fs/bpf` if it is not). A new agent reuses maps already pinned there and reads
//! their contents back into its [`ServiceTable`], so it continues from where the previous one
//! stopped. The cgroup attachments are bpf_links owned by this process: they end when the
//! [`Dataplane`] is dropped or the process exits. [`Dataplane::cleanup`] also removes the pins.

pub mod sockdiag;
mod table;

pub use table::{Frontend, FrontendPolicy, Protocol, ServiceTable, UpdateStats};

use anyhow::{Context, Result, bail};
use aya::maps::{HashMap as BpfHashMap, PerCpuArray};
use aya::programs::links::FdLink;
use aya::programs::links::LinkOrder;
use aya::programs::tc::TcAttachOptions;
pub use aya::programs::xdp::XdpMode;
use aya::programs::{CgroupAttachMode, CgroupSock, CgroupSockAddr, Program, SchedClassifier, TcAttachType, Xdp};
use aya::{Ebpf, EbpfLoader};
use skiff_dataplane_common::{MAP_AFFINITY, MAP_BACKENDS, MAP_COUNTERS, MAP_CT, MAP_PACKETS, MAP_REVNAT, MAP_SERVICES};
use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};

/// Where bpffs is mounted (and mounted by [`Dataplane::load`] if it is not).
pub const BPFFS_MOUNT: &str = "/sys/fs/bpf";
/// Default directory for Skiff's pinned maps.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/skiff";
/// File name of the built object (in `target/bpf/`, and next to an installed agent binary).
pub const OBJECT_FILE: &str = "skiff-dataplane.o";
/// Environment variable naming the object file to load.
pub const OBJECT_ENV: &str = "SKIFF_EBPF_OBJECT";

/// The socket programs in the object, in attach order. connect4 comes last so that by the time
/// connections are translated, the reverse programs (and the release hook that removes a
/// socket's reverse entry) are in place. All but the release hook are cgroup sock_addr programs.
pub const SOCKET_PROGRAMS: &[&str] =
    &[SOCK_RELEASE_PROGRAM, "skiff_getpeername4", "skiff_recvmsg4", "skiff_sendmsg4", "skiff_connect4"];

/// The cgroup sock program (`sock_release`) that deletes a closing socket's `SKIFF_RNAT` entry.
pub const SOCK_RELEASE_PROGRAM: &str = "skiff_sock_release";

/// The per-packet NodePort program (tc ingress), attached by [`Dataplane::attach_nodeport`].
pub const NODEPORT_PROGRAM: &str = "skiff_nodeport";

/// The NodePort program's XDP companion (hairpin flows only), attached by
/// [`NodePortAttacher::attach_nodeport_xdp`].
pub const NODEPORT_XDP_PROGRAM: &str = "skiff_nodeport_xdp";

/// Subdirectory of the pin directory holding pinned cgroup links.
pub const LINKS_DIR: &str = "links";

/// The service map's name before its layout gained the affinity timeout: `cleanup` removes a pin
/// an older agent left.
const LEGACY_SERVICES_V1: &str = "SKIFF_SVC_V1";

/// The two kinds of cgroup program in [`SOCKET_PROGRAMS`]; the one place that tells them apart.
enum SocketProgram<'a> {
    Addr(&'a mut CgroupSockAddr),
    Sock(&'a mut CgroupSock),
}

impl<'a> SocketProgram<'a> {
    /// One of [`SOCKET_PROGRAMS`] in `ebpf`, by its program type.
    fn of(ebpf: &'a mut Ebpf, name: &str) -> Result<Self> {
        match ebpf.program_mut(name).with_context(|| format!("program {name} missing from the eBPF object"))? {
            Program::CgroupSockAddr(p) => Ok(SocketProgram::Addr(p)),
            Program::CgroupSock(p) => Ok(SocketProgram::Sock(p)),
            _ => bail!("program {name} is not a cgroup socket program"),
        }
    }

    fn load(self) -> Result<(), aya::programs::ProgramError> {
        match self {
            SocketProgram::Addr(p) => p.load(),
            SocketProgram::Sock(p) => p.load(),
        }
    }

    fn fd(&self) -> Result<std::os::fd::RawFd, aya::programs::ProgramError> {
        Ok(match self {
            SocketProgram::Addr(p) => p.fd()?.as_fd().as_raw_fd(),
            SocketProgram::Sock(p) => p.fd()?.as_fd().as_raw_fd(),
        })
    }

    /// Attaches to `cgroup`; the program keeps the link (detached when it is dropped).
    fn attach(self, cgroup: &File) -> Result<(), aya::programs::ProgramError> {
        match self {
            SocketProgram::Addr(p) => p.attach(cgroup, CgroupAttachMode::Single).map(drop),
            SocketProgram::Sock(p) => p.attach(cgroup, CgroupAttachMode::Single).map(drop),
        }
    }

    /// Attaches to `cgroup` and hands the link over (to be pinned).
    fn attach_link(self, cgroup: &File) -> Result<FdLink> {
        let link = match self {
            SocketProgram::Addr(p) => {
                let id = p.attach(cgroup, CgroupAttachMode::Single)?;
                p.take_link(id)?.try_into()
            }
            SocketProgram::Sock(p) => {
                let id = p.attach(cgroup, CgroupAttachMode::Single)?;
                p.take_link(id)?.try_into()
            }
        };
        link.context("the cgroup link is not an fd link")
    }
}

/// What [`Dataplane::attach_cgroup_pinned`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AttachOutcome {
    /// Programs attached anew (and their links pinned).
    pub attached: usize,
    /// Pinned links found and switched to this instance's programs.
    pub reused: usize,
}

/// The two bpf(2) commands aya 0.14 does not expose: open a pinned object, update a link.
mod sys {
    use std::ffi::CString;
    use std::io;
    use std::os::fd::{FromRawFd, OwnedFd, RawFd};
    use std::path::Path;

    const BPF_OBJ_GET: libc::c_long = 7;
    const BPF_LINK_UPDATE: libc::c_long = 29;

    #[repr(C)]
    struct ObjGetAttr {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }

    #[repr(C)]
    struct LinkUpdateAttr {
        link_fd: u32,
        new_prog_fd: u32,
        flags: u32,
        old_prog_fd: u32,
    }

    fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
        // SAFETY: `attr` is a valid, fully initialised prefix of `union bpf_attr` for `cmd`; the
        // kernel zero-extends attributes shorter than its own.
        let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, std::mem::size_of::<T>() as libc::c_uint) };
        if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r) }
    }

    pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
        let c = CString::new(path.as_os_str().as_encoded_bytes()).map_err(io::Error::other)?;
        let mut attr = ObjGetAttr { pathname: c.as_ptr() as u64, bpf_fd: 0, file_flags: 0 };
        let fd = bpf(BPF_OBJ_GET, &mut attr)?;
        // SAFETY: the kernel returned a new fd that we own.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
    }

    pub fn link_update(link_fd: RawFd, new_prog_fd: RawFd) -> io::Result<()> {
        let mut attr =
            LinkUpdateAttr { link_fd: link_fd as u32, new_prog_fd: new_prog_fd as u32, flags: 0, old_prog_fd: 0 };
        bpf(BPF_LINK_UPDATE, &mut attr).map(|_| ())
    }
}

/// `statfs` magic of bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Where to read the compiled programs from.
#[derive(Clone, Debug)]
pub enum ObjectSource {
    /// An object file on disk.
    Path(PathBuf),
    /// Bytes in memory.
    Bytes(Vec<u8>),
    /// The object compiled into this binary (`embed-ebpf` feature).
    #[cfg(feature = "embed-ebpf")]
    Embedded,
}

#[cfg(feature = "embed-ebpf")]
static EMBEDDED: &[u8] = include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/bpf/skiff-dataplane.o"));

impl Default for ObjectSource {
    /// The embedded object with `embed-ebpf`, else [`ObjectSource::Path`] of [`default_object_path`].
    fn default() -> Self {
        #[cfg(feature = "embed-ebpf")]
        {
            ObjectSource::Embedded
        }
        #[cfg(not(feature = "embed-ebpf"))]
        {
            ObjectSource::Path(default_object_path())
        }
    }
}

impl ObjectSource {
    fn bytes(&self) -> Result<std::borrow::Cow<'_, [u8]>> {
        Ok(match self {
            ObjectSource::Path(p) => std::borrow::Cow::Owned(std::fs::read(p).with_context(|| {
                format!("reading the eBPF object {} (build it with `cargo xtask build-ebpf`)", p.display())
            })?),
            ObjectSource::Bytes(b) => std::borrow::Cow::Borrowed(b),
            #[cfg(feature = "embed-ebpf")]
            ObjectSource::Embedded => std::borrow::Cow::Borrowed(EMBEDDED),
        })
    }
}

/// `$SKIFF_EBPF_OBJECT`, else `skiff-dataplane.o` next to the executable if it exists, else the
/// workspace's `target/bpf/skiff-dataplane.o` (where `cargo xtask build-ebpf` writes it).
pub fn default_object_path() -> PathBuf {
    if let Some(p) = std::env::var_os(OBJECT_ENV) {
        return PathBuf::from(p);
    }
    if let Some(beside) = std::env::current_exe().ok().and_then(|e| e.parent().map(|d| d.join(OBJECT_FILE)))
        && beside.exists()
    {
        return beside;
    }
    workspace_object_path()
}

/// `<workspace>/target/bpf/skiff-dataplane.o` (as known at compile time).
pub fn workspace_object_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("target").join("bpf").join(OBJECT_FILE)
}

/// Dataplane configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// The compiled programs.
    pub object: ObjectSource,
    /// Directory (on bpffs) for the pinned maps. Created if missing.
    pub pin_dir: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Self { object: ObjectSource::default(), pin_dir: PathBuf::from(DEFAULT_PIN_DIR) }
    }
}

/// The loaded programs, their cgroup attachments, and the service table.
pub struct Dataplane {
    ebpf: Ebpf,
    pin_dir: PathBuf,
    attached: Vec<PathBuf>,
    /// The service and backend maps.
    pub services: ServiceTable,
}

impl Dataplane {
    /// Loads the object, creates or reuses the pinned maps under `config.pin_dir`, and loads the
    /// socket programs into the kernel (not yet attached: see [`Dataplane::attach_cgroup`]).
    pub fn load(config: &Config) -> Result<Self> {
        ensure_bpffs(Path::new(BPFFS_MOUNT))?;
        std::fs::create_dir_all(&config.pin_dir)
            .with_context(|| format!("creating the pin directory {}", config.pin_dir.display()))?;
        if !is_bpffs(&config.pin_dir)? {
            bail!("{} is not on a bpffs; maps cannot be pinned there", config.pin_dir.display());
        }
        raise_memlock_limit();
        let bytes = config.object.bytes()?;
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&config.pin_dir)
            .load(&bytes)
            .context("loading the eBPF object (maps)")?;
        for name in SOCKET_PROGRAMS {
            SocketProgram::of(&mut ebpf, name)?.load().with_context(|| format!("loading program {name} (verifier)"))?;
        }
        let tc: &mut SchedClassifier = ebpf
            .program_mut(NODEPORT_PROGRAM)
            .with_context(|| format!("program {NODEPORT_PROGRAM} missing from the eBPF object"))?
            .try_into()
            .with_context(|| format!("program {NODEPORT_PROGRAM} is not a tc classifier"))?;
        tc.load().with_context(|| format!("loading program {NODEPORT_PROGRAM} (verifier)"))?;
        let xdp: &mut Xdp = ebpf
            .program_mut(NODEPORT_XDP_PROGRAM)
            .with_context(|| format!("program {NODEPORT_XDP_PROGRAM} missing from the eBPF object"))?
            .try_into()
            .with_context(|| format!("program {NODEPORT_XDP_PROGRAM} is not an XDP program"))?;
        xdp.load().with_context(|| format!("loading program {NODEPORT_XDP_PROGRAM} (verifier)"))?;
        let services = BpfHashMap::try_from(ebpf.take_map(MAP_SERVICES).context("map SKIFF_SVC missing")?)
            .context("service map type")?;
        let backends = BpfHashMap::try_from(ebpf.take_map(MAP_BACKENDS).context("map SKIFF_BE missing")?)
            .context("backend map type")?;
        let counters = PerCpuArray::try_from(ebpf.take_map(MAP_COUNTERS).context("map SKIFF_CNT missing")?)
            .context("counters map type")?;
        let revnat = BpfHashMap::try_from(ebpf.take_map(MAP_REVNAT).context("map SKIFF_RNAT missing")?)
            .context("reverse-translation map type")?;
        let packets = PerCpuArray::try_from(ebpf.take_map(MAP_PACKETS).context("map SKIFF_PKT missing")?)
            .context("packet counters map type")?;
        let services = ServiceTable::new(services, backends, counters, packets, revnat)?;
        Ok(Self { ebpf, pin_dir: config.pin_dir.clone(), attached: Vec::new(), services })
    }

    /// Attaches the socket programs to a cgroup v2 directory (e.g. `/sys/fs/cgroup/unified` for
    /// the whole host in hybrid mode, or a test's own cgroup). Processes in that cgroup and its
    /// descendants get service translation.
    ///
    /// The attachments are bpf_links, which the kernel always adds in multi-program mode, so
    /// programs others attached there (Docker's, systemd's) keep running. That is also why the
    /// mode passed is `Single`: aya hands the mode to `BPF_LINK_CREATE` as flags, and the kernel
    /// rejects `BPF_F_ALLOW_MULTI` there with EINVAL (`cgroup_bpf_link_attach` accepts only the
    /// `BPF_F_LINK_ATTACH_MASK` ordering flags).
    pub fn attach_cgroup(&mut self, cgroup: &Path) -> Result<()> {
        if !is_cgroup2(cgroup)? {
            bail!("{} is not a cgroup v2 directory", cgroup.display());
        }
        let dir = File::open(cgroup).with_context(|| format!("opening cgroup {}", cgroup.display()))?;
        for name in SOCKET_PROGRAMS {
            SocketProgram::of(&mut self.ebpf, name)?
                .attach(&dir)
                .with_context(|| format!("attaching {name} to {}", cgroup.display()))?;
        }
        self.attached.push(cgroup.to_path_buf());
        Ok(())
    }

    /// Like [`Dataplane::attach_cgroup`], but the attachments survive this process: each bpf_link
    /// is pinned under `<pin_dir>/links/cg<cgroup inode>/<program>`. If such pins exist already
    /// (a previous agent attached them), nothing is attached anew: each existing link is switched
    /// atomically to this instance's program (`BPF_LINK_UPDATE`), so a restart or upgrade never
    /// leaves a moment without translation and never stacks a second copy of the programs.
    /// [`Dataplane::cleanup`] removes the link pins, which detaches the programs.
    pub fn attach_cgroup_pinned(&mut self, cgroup: &Path) -> Result<AttachOutcome> {
        use std::os::unix::fs::MetadataExt;
        if !is_cgroup2(cgroup)? {
            bail!("{} is not a cgroup v2 directory", cgroup.display());
        }
        let ino = std::fs::metadata(cgroup).with_context(|| format!("stat {}", cgroup.display()))?.ino();
        let dir = self.pin_dir.join(LINKS_DIR).join(format!("cg{ino}"));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let cg = File::open(cgroup).with_context(|| format!("opening cgroup {}", cgroup.display()))?;
        let mut outcome = AttachOutcome::default();
        for name in SOCKET_PROGRAMS {
            let pin = dir.join(name);
            let prog = SocketProgram::of(&mut self.ebpf, name)?;
            if pin.exists() {
                let link = sys::obj_get(&pin).with_context(|| format!("opening the pinned link {}", pin.display()))?;
                let prog_fd = prog.fd().context("program fd")?;
                sys::link_update(link.as_raw_fd(), prog_fd)
                    .with_context(|| format!("switching the pinned link {} to the new program", pin.display()))?;
                outcome.reused += 1;
            } else {
                let link =
                    prog.attach_link(&cg).with_context(|| format!("attaching {name} to {}", cgroup.display()))?;
                // Dropping the returned PinnedLink closes our fd; the pin keeps the link.
                link.pin(&pin).with_context(|| format!("pinning the link {}", pin.display()))?;
                outcome.attached += 1;
            }
        }
        self.attached.push(cgroup.to_path_buf());
        Ok(outcome)
    }

    /// Attaches the per-packet NodePort program to the tc ingress of `interface` (tcx, so other
    /// tc programs there keep running), for packets from other machines to the node's NodePorts
    /// and for the replies of backends behind this node. The interface is looked up in the
    /// calling thread's network namespace. Like [`Dataplane::attach_cgroup_pinned`], the link is
    /// pinned (`<pin_dir>/links/tc<netns inode>-<ifindex>/`) and a restarted agent switches it to
    /// its own program atomically instead of attaching a second copy.
    pub fn attach_nodeport(&mut self, interface: &str) -> Result<AttachOutcome> {
        self.split().0.attach_nodeport(interface)
    }

    /// The program attacher and the service maps, borrowed separately, so interfaces that appear
    /// later (the pod bridge) can be attached while the proxy programs the maps.
    pub fn split(&mut self) -> (NodePortAttacher<'_>, &mut ServiceTable) {
        (NodePortAttacher { ebpf: &mut self.ebpf, pin_dir: &self.pin_dir }, &mut self.services)
    }

    /// The cgroups the programs are attached to.
    pub fn attached_cgroups(&self) -> &[PathBuf] {
        &self.attached
    }

    /// The pin directory of the maps.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// Detaches the programs, unloads them, and removes the pinned maps (and the pin directory if
    /// it is then empty). For tests and for `skiff down`; an agent restart must not call it.
    pub fn cleanup(self) -> Result<()> {
        let Dataplane { ebpf, pin_dir, attached: _, services } = self;
        // Dropping the programs closes their bpf_link fds, which detaches them.
        drop(ebpf);
        drop(services);
        let mut first_err = None;
        for name in [
            MAP_SERVICES,
            MAP_BACKENDS,
            MAP_REVNAT,
            MAP_COUNTERS,
            MAP_AFFINITY,
            MAP_CT,
            MAP_PACKETS,
            LEGACY_SERVICES_V1,
        ] {
            let p = pin_dir.join(name);
            if let Err(e) = std::fs::remove_file(&p)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                first_err.get_or_insert(anyhow::Error::from(e).context(format!("unpinning {}", p.display())));
            }
        }
        // Pinned links (attach_cgroup_pinned): unpinning the last reference detaches.
        if let Ok(dirs) = std::fs::read_dir(pin_dir.join(LINKS_DIR)) {
            for d in dirs.flatten() {
                if let Ok(files) = std::fs::read_dir(d.path()) {
                    for f in files.flatten() {
                        if let Err(e) = std::fs::remove_file(f.path()) {
                            first_err.get_or_insert(
                                anyhow::Error::from(e).context(format!("unpinning {}", f.path().display())),
                            );
                        }
                    }
                }
                let _ = std::fs::remove_dir(d.path());
            }
            let _ = std::fs::remove_dir(pin_dir.join(LINKS_DIR));
        }
        let _ = std::fs::remove_dir(&pin_dir); // only succeeds if empty
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// Attaches the NodePort program to interfaces; see [`Dataplane::attach_nodeport`].
pub struct NodePortAttacher<'a> {
    ebpf: &'a mut Ebpf,
    pin_dir: &'a Path,
}

impl NodePortAttacher<'_> {
    /// See [`Dataplane::attach_nodeport`].
    pub fn attach_nodeport(&mut self, interface: &str) -> Result<AttachOutcome> {
        let (ifindex, dir) = self.link_dir("tc", interface)?;
        let pin = dir.join(NODEPORT_PROGRAM);
        let prog: &mut SchedClassifier =
            self.ebpf.program_mut(NODEPORT_PROGRAM).context("program missing")?.try_into()?;
        if let Some(outcome) = reuse_pinned_link(&pin, prog.fd().context("program fd")?.as_fd().as_raw_fd())? {
            return Ok(outcome);
        }
        let id = prog
            .attach_with_options(interface, TcAttachType::Ingress, TcAttachOptions::TcxOrder(LinkOrder::default()))
            .with_context(|| format!("attaching {NODEPORT_PROGRAM} to the tc ingress of {interface} ({ifindex})"))?;
        let link: FdLink = prog.take_link(id)?.try_into().context("the tcx link is not an fd link")?;
        link.pin(&pin).with_context(|| format!("pinning the link {}", pin.display()))?;
        Ok(AttachOutcome { attached: 1, reused: 0 })
    }

    /// Attaches the XDP companion of the NodePort program to `interface` (`mode`: `Driver` for
    /// native XDP, which fails where the driver has none; `Skb` for generic XDP). It bounces
    /// hairpin NodePort flows (in and out of this interface) before the stack sees them and
    /// passes everything else to the tc program, which must be attached too. Pinned like
    /// [`Dataplane::attach_nodeport`].
    pub fn attach_nodeport_xdp(&mut self, interface: &str, mode: XdpMode) -> Result<AttachOutcome> {
        let (ifindex, dir) = self.link_dir("xdp", interface)?;
        let pin = dir.join(NODEPORT_XDP_PROGRAM);
        let prog: &mut Xdp = self.ebpf.program_mut(NODEPORT_XDP_PROGRAM).context("program missing")?.try_into()?;
        if let Some(outcome) = reuse_pinned_link(&pin, prog.fd().context("program fd")?.as_fd().as_raw_fd())? {
            return Ok(outcome);
        }
        let id = prog
            .attach_to_if_index(ifindex, mode)
            .with_context(|| format!("attaching {NODEPORT_XDP_PROGRAM} to {interface} ({mode:?} mode)"))?;
        let link: FdLink = prog
            .take_link(id)?
            .try_into()
            .context("the XDP link is a netlink attachment (kernel without XDP bpf_links), which cannot be pinned")?;
        link.pin(&pin).with_context(|| format!("pinning the link {}", pin.display()))?;
        Ok(AttachOutcome { attached: 1, reused: 0 })
    }

    /// The interface's index (in the calling thread's network namespace) and the pin directory
    /// of its `kind` link: `<pin_dir>/links/<kind><netns inode>-<ifindex>/`.
    fn link_dir(&self, kind: &str, interface: &str) -> Result<(u32, PathBuf)> {
        use std::os::unix::fs::MetadataExt;
        let c = CString::new(interface).context("interface name with NUL")?;
        // SAFETY: valid C string.
        let ifindex = unsafe { libc::if_nametoindex(c.as_ptr()) };
        if ifindex == 0 {
            return Err(std::io::Error::last_os_error()).with_context(|| format!("no interface {interface}"));
        }
        let netns = std::fs::metadata("/proc/thread-self/ns/net").context("stat of the network namespace")?.ino();
        let dir = self.pin_dir.join(LINKS_DIR).join(format!("{kind}{netns}-{ifindex}"));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok((ifindex, dir))
    }
}

/// If a previous agent pinned a link at `pin`, switches it to `prog_fd` atomically
/// (`BPF_LINK_UPDATE`) and says so; `None` if there is no such pin.
fn reuse_pinned_link(pin: &Path, prog_fd: std::os::fd::RawFd) -> Result<Option<AttachOutcome>> {
    if !pin.exists() {
        return Ok(None);
    }
    let link = sys::obj_get(pin).with_context(|| format!("opening the pinned link {}", pin.display()))?;
    sys::link_update(link.as_raw_fd(), prog_fd)
        .with_context(|| format!("switching the pinned link {} to the new program", pin.display()))?;
    Ok(Some(AttachOutcome { attached: 0, reused: 1 }))
}

fn statfs_type(path: &Path) -> Result<i64> {
    let c = CString::new(path.as_os_str().as_encoded_bytes()).context("path with NUL")?;
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid C string and out-pointer.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("statfs {}", path.display()));
    }
    #[allow(clippy::unnecessary_cast)] // `__fsword_t` differs between architectures
    Ok(st.f_type as i64)
}

fn is_bpffs(path: &Path) -> Result<bool> {
    Ok(statfs_type(path)? == BPF_FS_MAGIC)
}

#[allow(clippy::unnecessary_cast)] // the magic's type differs between architectures
fn is_cgroup2(path: &Path) -> Result<bool> {
    Ok(statfs_type(path)? == libc::CGROUP2_SUPER_MAGIC as i64)
}

/// Mounts bpffs at `mount_point` unless one is mounted there already.
pub fn ensure_bpffs(mount_point: &Path) -> Result<()> {
    std::fs::create_dir_all(mount_point).with_context(|| format!("creating {}", mount_point.display()))?;
    if is_bpffs(mount_point)? {
        return Ok(());
    }
    let target = CString::new(mount_point.as_os_str().as_encoded_bytes())?;
    // SAFETY: valid C strings; no data argument.
    let rc = unsafe { libc::mount(c"bpf".as_ptr(), target.as_ptr(), c"bpf".as_ptr(), 0, c"mode=0700".as_ptr().cast()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("mounting bpffs at {}", mount_point.display()));
    }
    Ok(())
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; newer ones use memcg and ignore it.
fn raise_memlock_limit() {
    let lim = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: plain syscall with a valid pointer; failure only matters on old kernels.
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim) };
}
