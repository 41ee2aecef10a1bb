//! The resource manager: what this machine has (cores, memory, GPUs) and how much of it the
//! engine's worker processes have reserved.
//!
//! Worker processes (Python UDF workers, service replicas) declare what each one needs in a
//! [`ResourceRequest`]: CPUs, GPUs (a fraction packs several workers onto one GPU) and
//! memory. A pool first asks [`ResourceManager::check`] whether its smallest size could ever
//! fit on this machine, so an impossible request fails at once with what was asked and what
//! exists instead of waiting forever; then each worker takes a [`Reservation`], which names
//! the GPUs the worker may use (its `CUDA_VISIBLE_DEVICES`) and gives everything back when it
//! is dropped.

use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

use rillet_common::{Result, RilletError};

/// Units of a GPU in the accounting: fractions are kept as integer thousandths so that
/// four workers of 0.25 fill a GPU exactly.
const GPU_UNITS: u32 = 1000;

/// One GPU this process may use.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuDevice {
    /// How `CUDA_VISIBLE_DEVICES` names it for a child process: the physical index from
    /// `nvidia-smi`, or the position of a virtual GPU.
    pub id: String,
    /// Model name (`"NVIDIA H100 80GB HBM3"`, or `"virtual"`).
    pub name: String,
    /// Total memory in bytes (0 when unknown, as for virtual GPUs).
    pub memory_bytes: u64,
}

/// What the machine offers to worker processes.
#[derive(Debug, Clone, PartialEq)]
pub struct MachineResources {
    /// Cores (logical CPUs this process may run on).
    pub cpus: f64,
    /// Memory in bytes (the cgroup limit when lower than the machine's).
    pub memory_bytes: u64,
    /// The GPUs, in the order `CUDA_VISIBLE_DEVICES` lists them (all of them when unset).
    pub gpus: Vec<GpuDevice>,
    /// True when the GPUs were declared for testing (`rl.init(num_gpus=N)`) rather than
    /// found.
    pub virtual_gpus: bool,
}

impl MachineResources {
    /// Look at this machine: cores, memory, and GPUs through `nvidia-smi`, honouring
    /// `CUDA_VISIBLE_DEVICES`.
    ///
    /// ```
    /// let machine = rillet_operator::MachineResources::detect();
    /// assert!(machine.cpus >= 1.0);
    /// ```
    pub fn detect() -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let gpus = std::process::Command::new("nvidia-smi")
            .args([
                "--query-gpu=index,uuid,name,memory.total",
                "--format=csv,noheader,nounits",
            ])
            .output()
            .ok()
            .filter(|out| out.status.success())
            .map(|out| {
                let visible = std::env::var("CUDA_VISIBLE_DEVICES").ok();
                parse_nvidia_smi(&String::from_utf8_lossy(&out.stdout), visible.as_deref())
            })
            .unwrap_or_default();
        Self {
            cpus,
            memory_bytes: machine_memory_bytes(),
            gpus,
            virtual_gpus: false,
        }
    }

    fn describe_gpus(&self) -> String {
        match (self.gpus.len(), self.virtual_gpus) {
            (0, _) => "no GPU".to_string(),
            (n, true) => format!("{n} virtual GPU{}", plural(n)),
            (n, false) => format!("{n} GPU{} ({})", plural(n), self.gpus[0].name),
        }
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// The GPUs in `nvidia-smi --query-gpu=index,uuid,name,memory.total
/// --format=csv,noheader,nounits` output that a process with `CUDA_VISIBLE_DEVICES =
/// visible` may use, in the order CUDA numbers them for it.
///
/// As CUDA does: unset means all GPUs; entries are indices or UUIDs (or UUID prefixes);
/// an empty value, or the first entry that names no GPU, ends the list.
///
/// ```
/// use rillet_operator::resources::parse_nvidia_smi;
/// let out = "0, GPU-aaaa, NVIDIA H100, 81559\n1, GPU-bbbb, NVIDIA H100, 81559\n";
/// assert_eq!(parse_nvidia_smi(out, None).len(), 2);
/// let only_second = parse_nvidia_smi(out, Some("1"));
/// assert_eq!(only_second[0].id, "1");
/// assert_eq!(only_second[0].memory_bytes, 81559 << 20);
/// assert!(parse_nvidia_smi(out, Some("")).is_empty());
/// ```
pub fn parse_nvidia_smi(output: &str, visible: Option<&str>) -> Vec<GpuDevice> {
    struct Row {
        index: String,
        uuid: String,
        device: GpuDevice,
    }
    let rows: Vec<Row> = output
        .lines()
        .filter_map(|line| {
            let parts: Vec<&str> = line.split(',').map(str::trim).collect();
            let [index, uuid, name, memory] = parts[..] else {
                return None;
            };
            Some(Row {
                index: index.to_string(),
                uuid: uuid.to_string(),
                device: GpuDevice {
                    id: index.to_string(),
                    name: name.to_string(),
                    memory_bytes: memory.parse::<u64>().unwrap_or(0) << 20,
                },
            })
        })
        .collect();
    let Some(visible) = visible else {
        return rows.into_iter().map(|r| r.device).collect();
    };
    let mut chosen = Vec::new();
    for entry in visible.split(',').map(str::trim) {
        let found = rows
            .iter()
            .find(|r| r.index == entry || (entry.starts_with("GPU-") && r.uuid.starts_with(entry)));
        match found {
            Some(row) if !chosen.contains(&row.device) => chosen.push(row.device.clone()),
            _ => break,
        }
    }
    chosen
}

/// Total memory: `/proc/meminfo`'s MemTotal, or the cgroup (v2) limit when lower.
fn machine_memory_bytes() -> u64 {
    let total = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(u64::MAX, |kb| kb * 1024);
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(u64::MAX);
    total.min(cgroup)
}

/// What one worker process needs.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ResourceRequest {
    /// CPUs (may be fractional).
    pub cpus: f64,
    /// GPUs: a fraction below 1 shares a GPU with other workers; 1 or more must be whole.
    pub gpus: f64,
    /// Memory in bytes.
    pub memory_bytes: u64,
}

impl ResourceRequest {
    /// Reject values no machine could satisfy (negative, NaN, or a GPU count above 1 that
    /// is not whole).
    pub fn validate(&self, who: &str) -> Result<()> {
        if !(self.cpus.is_finite() && self.cpus >= 0.0) {
            return Err(RilletError::Plan(format!(
                "{who}: num_cpus must be a number >= 0, got {}",
                self.cpus
            )));
        }
        if !(self.gpus.is_finite() && self.gpus >= 0.0) {
            return Err(RilletError::Plan(format!(
                "{who}: num_gpus must be a number >= 0, got {}",
                self.gpus
            )));
        }
        if self.gpus > 1.0 && self.gpus.fract() != 0.0 {
            return Err(RilletError::Plan(format!(
                "{who}: num_gpus above 1 must be a whole number of GPUs, got {}; a fraction \
                 below 1 shares one GPU between workers",
                self.gpus
            )));
        }
        if self.gpus > 0.0 && self.gpus < 1.0 && gpu_units(self.gpus) == 0 {
            return Err(RilletError::Plan(format!(
                "{who}: num_gpus={} is below the smallest share of a GPU (0.001)",
                self.gpus
            )));
        }
        Ok(())
    }

    fn describe(&self) -> String {
        let mut parts = vec![format!("{} CPU", trim_float(self.cpus))];
        if self.gpus > 0.0 {
            parts.push(format!("{} GPU", trim_float(self.gpus)));
        }
        if self.memory_bytes > 0 {
            parts.push(crate::metrics::human_bytes(self.memory_bytes));
        }
        parts.join(", ")
    }
}

fn trim_float(x: f64) -> String {
    let s = format!("{x:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// How many workers of one request fit on a machine, resource by resource.
struct Capacity {
    gpu: usize,
    cpu: usize,
    memory: usize,
}

impl Capacity {
    fn of(machine: &MachineResources, request: &ResourceRequest) -> Self {
        let fits = |total: u64, each: u64| match each {
            0 => usize::MAX,
            each => usize::try_from(total / each).unwrap_or(usize::MAX),
        };
        let gpu = if request.gpus == 0.0 {
            usize::MAX
        } else if request.gpus < 1.0 {
            (GPU_UNITS / gpu_units(request.gpus)) as usize * machine.gpus.len()
        } else {
            machine.gpus.len() / request.gpus as usize
        };
        Self {
            gpu,
            cpu: fits(cpu_millis(machine.cpus), cpu_millis(request.cpus)),
            memory: fits(machine.memory_bytes, request.memory_bytes),
        }
    }

    fn workers(&self) -> usize {
        self.gpu.min(self.cpu).min(self.memory)
    }
}

fn gpu_units(gpus: f64) -> u32 {
    (gpus.min(1.0) * GPU_UNITS as f64).round() as u32
}

fn cpu_millis(cpus: f64) -> u64 {
    (cpus * 1000.0).round() as u64
}

/// The machine and what is reserved of it; see the [module docs](self).
///
/// ```
/// use rillet_operator::{MachineResources, ResourceManager, ResourceRequest};
/// let machine = MachineResources { cpus: 4.0, memory_bytes: 1 << 30, gpus: vec![], virtual_gpus: false };
/// let manager = std::sync::Arc::new(ResourceManager::new(machine).with_virtual_gpus(1));
/// let half = ResourceRequest { cpus: 1.0, gpus: 0.5, memory_bytes: 0 };
/// manager.check(&half, 2, "udf(embed)").unwrap();
/// let a = manager.try_reserve(&half).unwrap();
/// let b = manager.try_reserve(&half).unwrap();
/// assert_eq!((a.cuda_visible_devices(), b.cuda_visible_devices()), ("0".into(), "0".into()));
/// assert!(manager.try_reserve(&half).is_none()); // the GPU is full
/// drop(a);
/// assert!(manager.try_reserve(&half).is_some());
/// ```
#[derive(Debug)]
pub struct ResourceManager {
    /// The machine as found (or as given to [`ResourceManager::new`]), which
    /// [`configure`](Self::configure) overrides; kept so a reset does not detect again.
    detected: MachineResources,
    state: Mutex<Ledger>,
    released: Condvar,
}

#[derive(Debug)]
struct Ledger {
    machine: MachineResources,
    free_cpu_millis: u64,
    free_memory: u64,
    /// Free thousandths of each GPU.
    free_gpu: Vec<u32>,
    reservations: usize,
}

impl Ledger {
    fn new(machine: MachineResources) -> Self {
        Self {
            free_cpu_millis: cpu_millis(machine.cpus),
            free_memory: machine.memory_bytes,
            free_gpu: vec![GPU_UNITS; machine.gpus.len()],
            machine,
            reservations: 0,
        }
    }
}

static GLOBAL: OnceLock<Arc<ResourceManager>> = OnceLock::new();

impl ResourceManager {
    /// A manager of `machine`, with nothing reserved.
    pub fn new(machine: MachineResources) -> Self {
        Self {
            detected: machine.clone(),
            state: Mutex::new(Ledger::new(machine)),
            released: Condvar::new(),
        }
    }

    /// The same machine with `count` virtual GPUs instead of its real ones (for testing
    /// GPU scheduling on a machine without GPUs).
    pub fn with_virtual_gpus(self, count: usize) -> Self {
        let mut machine = self.machine();
        set_virtual_gpus(&mut machine, count);
        Self::new(machine)
    }

    /// The process-wide manager, detecting the machine on first use.
    pub fn global() -> Arc<ResourceManager> {
        GLOBAL
            .get_or_init(|| Arc::new(ResourceManager::new(MachineResources::detect())))
            .clone()
    }

    /// Override what the machine offers (`rl.init(num_cpus=…, num_gpus=…, memory=…)`);
    /// `None` keeps the detected value (the machine given to [`new`](Self::new)). `gpus` declares that many virtual GPUs. Fails when
    /// workers still hold reservations after waiting up to 5 s for them to stop.
    pub fn configure(
        &self,
        cpus: Option<f64>,
        gpus: Option<usize>,
        memory_bytes: Option<u64>,
    ) -> Result<()> {
        let mut ledger = self.lock();
        // A job that just ended may still be stopping its workers: give them a moment.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while ledger.reservations > 0 && std::time::Instant::now() < deadline {
            ledger = self
                .released
                .wait_timeout(ledger, Duration::from_millis(20))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        if ledger.reservations > 0 {
            return Err(RilletError::Plan(format!(
                "cannot change the machine's resources while {} worker process{} hold{} them; \
                 call rl.init() before running jobs",
                ledger.reservations,
                if ledger.reservations == 1 { "" } else { "es" },
                if ledger.reservations == 1 { "s" } else { "" },
            )));
        }
        let mut machine = self.detected.clone();
        if let Some(cpus) = cpus {
            if !(cpus.is_finite() && cpus > 0.0) {
                return Err(RilletError::Plan(format!(
                    "num_cpus must be a number > 0, got {cpus}"
                )));
            }
            machine.cpus = cpus;
        }
        if let Some(count) = gpus {
            set_virtual_gpus(&mut machine, count);
        }
        if let Some(bytes) = memory_bytes {
            machine.memory_bytes = bytes;
        }
        *ledger = Ledger::new(machine);
        Ok(())
    }

    /// What the machine offers.
    pub fn machine(&self) -> MachineResources {
        self.lock().machine.clone()
    }

    /// Fail now, saying what was asked and what exists, when `workers` workers each needing
    /// `request` could never run at once on this machine. `who` names the pool in the
    /// message.
    pub fn check(&self, request: &ResourceRequest, workers: usize, who: &str) -> Result<()> {
        request.validate(who)?;
        let machine = self.machine();
        let workers = workers.max(1);
        let asked = format!(
            "{who} asks for {} per worker and at least {workers} worker{}",
            request.describe(),
            plural(workers)
        );
        let fix = "Lower num_cpus, num_gpus, memory or the minimum concurrency";
        let room = Capacity::of(&machine, request);
        if room.gpu < workers {
            let hint = if machine.gpus.is_empty() {
                " (declare virtual GPUs for testing with rl.init(num_gpus=N))"
            } else {
                ""
            };
            return Err(RilletError::Plan(format!(
                "{asked}, but this machine has {}, room for {} such worker{}. {fix}{hint}.",
                machine.describe_gpus(),
                room.gpu,
                plural(room.gpu)
            )));
        }
        if room.cpu < workers {
            return Err(RilletError::Plan(format!(
                "{asked}, but this machine has {} CPU{}. {fix}.",
                trim_float(machine.cpus),
                if machine.cpus == 1.0 { "" } else { "s" }
            )));
        }
        if room.memory < workers {
            return Err(RilletError::Plan(format!(
                "{asked}, but this machine has {} of memory. {fix}.",
                crate::metrics::human_bytes(machine.memory_bytes)
            )));
        }
        Ok(())
    }

    /// How many workers each needing `request` fit on this machine at once (the default
    /// largest size of a pool); `usize::MAX` for a request of nothing.
    ///
    /// ```
    /// use rillet_operator::{MachineResources, ResourceManager, ResourceRequest};
    /// let machine = MachineResources { cpus: 8.0, memory_bytes: 1 << 30, gpus: vec![], virtual_gpus: false };
    /// let manager = ResourceManager::new(machine).with_virtual_gpus(2);
    /// let quarter_gpu = ResourceRequest { cpus: 1.0, gpus: 0.25, memory_bytes: 0 };
    /// assert_eq!(manager.capacity(&quarter_gpu), 8);
    /// ```
    pub fn capacity(&self, request: &ResourceRequest) -> usize {
        Capacity::of(&self.machine(), request).workers()
    }

    /// Reserve `request` now if it is free, packing fractional GPUs onto the fullest GPU
    /// that still has room.
    pub fn try_reserve(self: &Arc<Self>, request: &ResourceRequest) -> Option<Reservation> {
        let mut ledger = self.lock();
        let cpus = cpu_millis(request.cpus);
        if cpus > ledger.free_cpu_millis || request.memory_bytes > ledger.free_memory {
            return None;
        }
        let gpus: Vec<(usize, u32)> = if request.gpus == 0.0 {
            Vec::new()
        } else if request.gpus < 1.0 {
            let units = gpu_units(request.gpus);
            let best = ledger
                .free_gpu
                .iter()
                .enumerate()
                .filter(|(_, free)| **free >= units)
                .min_by_key(|(i, free)| (**free, *i))?;
            vec![(best.0, units)]
        } else {
            let whole: Vec<(usize, u32)> = ledger
                .free_gpu
                .iter()
                .enumerate()
                .filter(|(_, free)| **free == GPU_UNITS)
                .map(|(i, _)| (i, GPU_UNITS))
                .take(request.gpus as usize)
                .collect();
            if whole.len() < request.gpus as usize {
                return None;
            }
            whole
        };
        ledger.free_cpu_millis -= cpus;
        ledger.free_memory -= request.memory_bytes;
        for &(gpu, units) in &gpus {
            ledger.free_gpu[gpu] -= units;
        }
        ledger.reservations += 1;
        let devices = gpus
            .iter()
            .map(|&(gpu, _)| ledger.machine.gpus[gpu].id.clone())
            .collect();
        Some(Reservation {
            manager: self.clone(),
            cpu_millis: cpus,
            memory_bytes: request.memory_bytes,
            gpus,
            devices,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn set_virtual_gpus(machine: &mut MachineResources, count: usize) {
    machine.gpus = (0..count)
        .map(|i| GpuDevice {
            id: i.to_string(),
            name: "virtual".to_string(),
            memory_bytes: 0,
        })
        .collect();
    machine.virtual_gpus = true;
}

/// Resources held by one worker; given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    manager: Arc<ResourceManager>,
    cpu_millis: u64,
    memory_bytes: u64,
    gpus: Vec<(usize, u32)>,
    devices: Vec<String>,
}

impl Reservation {
    /// The value of `CUDA_VISIBLE_DEVICES` for the worker: its GPUs, comma-separated
    /// (empty when it has none).
    pub fn cuda_visible_devices(&self) -> String {
        self.devices.join(",")
    }

    /// True if the reservation includes (a share of) a GPU.
    pub fn has_gpu(&self) -> bool {
        !self.gpus.is_empty()
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut ledger = self.manager.lock();
        ledger.free_cpu_millis += self.cpu_millis;
        ledger.free_memory += self.memory_bytes;
        for &(gpu, units) in &self.gpus {
            if let Some(free) = ledger.free_gpu.get_mut(gpu) {
                *free += units;
            }
        }
        ledger.reservations -= 1;
        drop(ledger);
        self.manager.released.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manager(cpus: f64, gpus: usize) -> Arc<ResourceManager> {
        let machine = MachineResources {
            cpus,
            memory_bytes: 8 << 30,
            gpus: vec![],
            virtual_gpus: false,
        };
        Arc::new(ResourceManager::new(machine).with_virtual_gpus(gpus))
    }

    fn request(cpus: f64, gpus: f64) -> ResourceRequest {
        ResourceRequest {
            cpus,
            gpus,
            memory_bytes: 0,
        }
    }

    #[test]
    fn fractional_gpus_pack_before_spreading() {
        let m = manager(16.0, 2);
        let quarter = request(0.0, 0.25);
        let held: Vec<_> = (0..4).map(|_| m.try_reserve(&quarter).unwrap()).collect();
        assert!(held.iter().all(|r| r.cuda_visible_devices() == "0"));
        let fifth = m.try_reserve(&quarter).unwrap();
        assert_eq!(fifth.cuda_visible_devices(), "1");
        // A whole GPU is only the untouched... none left whole now.
        assert!(m.try_reserve(&request(0.0, 1.0)).is_none());
        drop(held);
        let whole = m.try_reserve(&request(0.0, 1.0)).unwrap();
        assert_eq!(whole.cuda_visible_devices(), "0");
    }

    #[test]
    fn several_whole_gpus_are_listed() {
        let m = manager(16.0, 3);
        let two = m.try_reserve(&request(1.0, 2.0)).unwrap();
        assert_eq!(two.cuda_visible_devices(), "0,1");
        assert!(m.try_reserve(&request(1.0, 2.0)).is_none());
    }

    #[test]
    fn impossible_requests_fail_with_what_was_asked_and_what_exists() {
        let m = manager(2.0, 0);
        let err = m.check(&request(1.0, 1.0), 1, "udf(Embed)").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("udf(Embed) asks for 1 CPU, 1 GPU"), "{text}");
        assert!(text.contains("no GPU"), "{text}");
        assert!(text.contains("rl.init(num_gpus=N)"), "{text}");
        let err = m.check(&request(1.0, 0.0), 3, "udf(f)").unwrap_err();
        assert!(err.to_string().contains("has 2 CPUs"), "{err}");
        assert!(m.check(&request(0.5, 0.0), 4, "udf(f)").is_ok());
        let m = manager(8.0, 1);
        assert!(m.check(&request(1.0, 0.5), 2, "udf(f)").is_ok());
        assert!(m.check(&request(1.0, 0.5), 3, "udf(f)").is_err());
        assert!(m.check(&request(1.0, 1.5), 1, "udf(f)").is_err());
        assert!(m.check(&request(-1.0, 0.0), 1, "udf(f)").is_err());
    }

    #[test]
    fn cuda_visible_devices_filters_and_orders() {
        let out = "0, GPU-aaaa, A, 100\n1, GPU-bbbb, B, 200\n2, GPU-cccc, C, 300\n";
        let ids = |v: Option<&str>| {
            parse_nvidia_smi(out, v)
                .into_iter()
                .map(|g| g.id)
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(None), ["0", "1", "2"]);
        assert_eq!(ids(Some("2,0")), ["2", "0"]);
        assert_eq!(ids(Some("GPU-bb")), ["1"]);
        // CUDA stops at the first entry that names no device.
        assert_eq!(ids(Some("1,7,0")), ["1"]);
        assert!(ids(Some("-1")).is_empty());
    }

    #[test]
    fn configure_refuses_while_reserved() {
        let m = manager(4.0, 0);
        let held = m.try_reserve(&request(1.0, 0.0)).unwrap();
        assert!(m.configure(Some(2.0), None, None).is_err());
        drop(held);
        m.configure(Some(3.0), Some(2), None).unwrap();
        assert_eq!(m.machine().cpus, 3.0);
        assert_eq!(m.machine().gpus.len(), 2);
    }
}
