"""A real one-node Slurm cluster (slurmctld + slurmd + munged) for the tests, in a temp folder.

    apt-get install -y slurmctld slurmd slurm-client munge      # Debian's Slurm 22.05 (.ci/run does it)
    python -m pytest tests/test_slurm_cluster.py -q

`slurm_cluster` (a session fixture) writes a slurm.conf and a munge key into a fresh temp folder,
starts munged (as user munge, on a private socket), slurmctld -D and slurmd -D with SLURM_CONF
pointing there, waits until the node is idle and `srun -n2 hostname` answers, and at the end stops
the daemons and every process of its jobs. Nothing outside the temp folder is written, the ports are
free ones, so a system Slurm or another test session on the machine is not touched. Without the Slurm
programs (or without root, which slurmd needs to start jobs) the tests using it are skipped.

By hand (e.g. to try a template):

    python tests/slurm_cluster.py          # starts a cluster, prints `export SLURM_CONF=...`, Ctrl-C stops it
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

DAEMONS = ("munged", "mungekey", "slurmctld", "slurmd")
CLIENTS = ("sinfo", "srun", "sbatch", "scontrol", "scancel")
INSTALL = "apt-get install -y slurmctld slurmd slurm-client munge"
# Job states after which a job does nothing more by itself (scontrol's JobState).
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
                "DEADLINE", "PREEMPTED"}


def unavailable() -> str | None:
    """Why no cluster can be started here (a skip reason), or None."""
    missing = [tool for tool in (*DAEMONS, *CLIENTS) if shutil.which(tool, path=_sbin_path()) is None]
    if missing:
        return f"Slurm not installed (no {', '.join(missing)}): {INSTALL}"
    if os.geteuid() != 0:
        return "a test Slurm cluster needs root (slurmd starts the jobs' processes)"
    return None


def _sbin_path() -> str:
    # The daemons live in /usr/sbin, which a non-login PATH may lack.
    return os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"])


_LIBC = None


def _die_with_parent() -> None:
    """preexec_fn of the daemons: SIGTERM them when the process that started them dies, so a pytest
    killed from outside (a CI timeout) leaves no daemon behind. Runs after Popen's user switch, which
    would otherwise clear the setting. (libc is loaded before the fork: little may run in the child.)"""
    PR_SET_PDEATHSIG = 1
    _LIBC.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM))


def _load_libc() -> None:
    global _LIBC
    import ctypes

    _LIBC = _LIBC or ctypes.CDLL(None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class SlurmCluster:
    """A running test cluster: its config, its node and partition, and helpers around the clients."""
    folder: Path
    node: str
    cpus: int
    partition: str = "debug"
    daemons: dict = field(default_factory=dict)   # name -> Popen
    startup_s: float = 0.0                        # from the first daemon to a working `srun -n2`

    @property
    def conf(self) -> Path:
        return self.folder / "slurm.conf"

    def env(self, base: dict | None = None) -> dict:
        """`base` (default os.environ) without a caller's Slurm job variables, with SLURM_CONF set:
        what sbatch/srun need to talk to this cluster (and what jobs inherit from sbatch)."""
        env = {k: v for k, v in (os.environ if base is None else base).items() if not k.startswith("SLURM_")}
        env["SLURM_CONF"] = str(self.conf)
        env["PATH"] = _sbin_path() if base is None else env.get("PATH", _sbin_path())
        return env

    def run(self, *argv: str, timeout: float = 60, check: bool = True, env: dict | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess:
        """A Slurm client command against this cluster, e.g. run("scontrol", "show", "nodes")."""
        proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                              env=self.env(env), cwd=cwd)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip()}\n{self.logs()}")
        return proc

    def sbatch(self, *argv: str, env: dict | None = None, cwd: Path | None = None) -> str:
        """Submit (`sbatch --parsable ARGV`) and return the job id."""
        out = self.run("sbatch", "--parsable", *argv, env=env, cwd=cwd).stdout.strip()
        return out.split(";")[0]

    def job(self, job_id: str) -> dict:
        """`scontrol show job -o JOBID` as a dict (JobState, Restarts, ExitCode, StdOut, ...)."""
        out = self.run("scontrol", "show", "job", "-o", job_id).stdout
        # Values may hold spaces only in a few keys (Command args, Comment): split on ' Key=' boundaries.
        return dict(re.findall(r"(?:^|\s)(\w[\w:/]*)=(.*?)(?=\s\w[\w:/]*=|\s*$)", out.strip()))

    def wait_job(self, job_id: str, timeout: float, states=FINAL_STATES, poll: float = 1.0) -> dict:
        """Poll until the job's JobState is in `states`; its record. TimeoutError (with the record)
        otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            info = self.job(job_id)
            if info.get("JobState") in states:
                return info
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {info.get('JobState')} after {timeout:.0f} s: {info}")
            time.sleep(poll)

    def cancel_all(self, timeout: float = 60) -> None:
        """Cancel every job of the cluster and wait until none is running."""
        self.run("scancel", "--user=root", check=False)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            squeue = self.run("squeue", "-h", "-o", "%i %T", check=False).stdout.strip()
            if not squeue:
                return
            time.sleep(1)

    def logs(self, tail: int = 2000) -> str:
        """The end of the daemons' logs (for failure messages)."""
        parts = []
        for name in ("slurmctld.log", "slurmd.log", "munged.log"):
            path = self.folder / name
            if path.exists():
                parts.append(f"--- {name}\n{path.read_text(errors='replace')[-tail:]}")
        return "\n".join(parts)

    def own_processes(self) -> list[int]:
        """Pids of processes started for this cluster that are not daemons: slurmstepd and every job
        process. They are told apart by SLURM_CONF=<this config> in their environment (slurmd hands
        its own environment to slurmstepd, sbatch hands the submitter's to the job)."""
        marker = f"SLURM_CONF={self.conf}".encode()
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                if marker in (entry / "environ").read_bytes().split(b"\0"):
                    pids.append(int(entry.name))
            except OSError:  # gone, or not ours to read
                continue
        return pids

    def stop(self) -> None:
        """Cancel the jobs, stop the daemons, kill what is left of the jobs; nothing keeps running."""
        if self.daemons.get("slurmctld") and self.daemons["slurmctld"].poll() is None:
            try:
                self.cancel_all(timeout=30)
            except Exception:  # noqa: BLE001 - stopping must go on whatever the clients say
                pass
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.daemons.get(name)
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        for pid in self.own_processes():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _node_line(node: str) -> tuple[str, int]:
    """slurm.conf's NodeName line for this machine, from `slurmd -C` (what slurmd will report, so the
    node is not drained for a mismatch), and its CPU count."""
    out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True, timeout=30,
                         env={**os.environ, "PATH": _sbin_path()}).stdout
    first = out.splitlines()[0]
    fields = dict(item.split("=", 1) for item in first.split())
    cpus = int(fields["CPUs"])
    # A little below the measured memory: what slurmd measures moves by a few MB between starts.
    memory = max(1, int(fields["RealMemory"]) * 95 // 100)
    keys = ("CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore")
    spec = " ".join(f"{k}={fields[k]}" for k in keys if k in fields)
    return f"NodeName={node} NodeAddr=127.0.0.1 {spec} RealMemory={memory} State=UNKNOWN", cpus


def write_config(folder: Path, node: str) -> int:
    """slurm.conf for a one-node cluster in `folder` (state, spool, logs, pid files there too); the
    node's CPU count."""
    node_line, cpus = _node_line(node)
    for sub in ("state", "spool"):
        (folder / sub).mkdir(exist_ok=True)
    auth = f"socket={folder / 'munge' / 'munge.socket'},cred_expire=20"
    lines = [
        "ClusterName=aotraintest",
        f"SlurmctldHost={node}(127.0.0.1)",
        f"SlurmctldPort={_free_port()}",
        f"SlurmdPort={_free_port()}",
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        # cred_expire: a requeued job may start only after its old credentials expired; the default
        # (120 s) would make every requeued job wait over two minutes.
        f"AuthInfo={auth}",
        f"StateSaveLocation={folder / 'state'}",
        f"SlurmdSpoolDir={folder / 'spool'}",
        f"SlurmctldPidFile={folder / 'slurmctld.pid'}",
        f"SlurmdPidFile={folder / 'slurmd.pid'}",
        f"SlurmctldLogFile={folder / 'slurmctld.log'}",
        f"SlurmdLogFile={folder / 'slurmd.log'}",
        "SlurmctldDebug=info",
        "SlurmdDebug=info",
        # No cgroups in a container without systemd: track processes through /proc, no task binding.
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_CPU",
        "MpiDefault=none",
        "SchedulerType=sched/backfill",
        # A requeued job may start cred_expire s later, and only a scheduling pass starts it: the
        # backfill pass every second instead of every 30 s, so a pre-emption costs ~21 s, not ~50.
        "SchedulerParameters=bf_interval=1",
        # Accounting off: no slurmdbd (so no sacct; tests read `scontrol show job`).
        "AccountingStorageType=accounting_storage/none",
        "JobAcctGatherType=jobacct_gather/none",
        "JobCompType=jobcomp/none",
        # A node that went down (e.g. slurmd restarted) comes back by itself.
        "ReturnToService=2",
        # Seconds between SIGTERM and SIGKILL when a job or step ends.
        "KillWait=10",
        # Finished jobs stay visible to `scontrol show job` for an hour (default 300 s).
        "MinJobAge=3600",
        "SlurmctldTimeout=30",
        "SlurmdTimeout=30",
        "InactiveLimit=0",
        "JobRequeue=1",
        node_line,
        f"PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP",
    ]
    (folder / "slurm.conf").write_text("\n".join(lines) + "\n")
    return cpus


def _start_munged(folder: Path) -> subprocess.Popen:
    """A munged of our own (user munge, key and socket in folder/munge), so no system munged is
    needed or touched. munged wants its socket folder writable by it only and searchable by all
    (clients connect from any user)."""
    munge_dir = folder / "munge"
    munge_dir.mkdir()
    munge_dir.chmod(0o755)
    key = munge_dir / "munge.key"
    subprocess.run(["mungekey", "--create", f"--keyfile={key}"], check=True, capture_output=True, timeout=30,
                   env={**os.environ, "PATH": _sbin_path()})
    shutil.chown(munge_dir, "munge", "munge")
    shutil.chown(key, "munge", "munge")
    log = open(folder / "munged.log", "w")
    argv = [shutil.which("munged", path=_sbin_path()), "--foreground", f"--key-file={key}",
            f"--socket={munge_dir / 'munge.socket'}", f"--pid-file={munge_dir / 'munged.pid'}",
            f"--seed-file={munge_dir / 'munged.seed'}", f"--log-file={munge_dir / 'munged.log'}"]
    return subprocess.Popen(argv, user="munge", group="munge", extra_groups=[], stdout=log,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                            preexec_fn=_die_with_parent)


def start_cluster(folder: Path, timeout: float = 90) -> SlurmCluster:
    """Start munged, slurmctld and slurmd for a one-node cluster in `folder` (created, world-readable
    so the munge user can reach its socket) and wait until `srun -n2 hostname` answers."""
    _load_libc()
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o755)
    node = socket.gethostname().split(".")[0]  # slurmd names itself by the short host name
    cpus = write_config(folder, node)
    cluster = SlurmCluster(folder=folder, node=node, cpus=cpus)
    started = time.monotonic()
    try:
        cluster.daemons["munged"] = _start_munged(folder)
        socket_path = folder / "munge" / "munge.socket"
        _wait(lambda: socket_path.exists(), 20, "munged's socket", cluster)
        env = cluster.env()
        for name, argv in (("slurmctld", ["slurmctld", "-D", "-i"]), ("slurmd", ["slurmd", "-D", "-N", node])):
            out = open(folder / f"{name}.out", "w")
            # A session of their own: a Ctrl-C meant for pytest does not reach them, stop() does.
            cluster.daemons[name] = subprocess.Popen(
                [shutil.which(argv[0], path=_sbin_path()), *argv[1:]], env=env, stdout=out,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                preexec_fn=_die_with_parent)

        def node_idle() -> bool:
            for name, proc in cluster.daemons.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited {proc.returncode}\n{cluster.logs()}")
            out = cluster.run("sinfo", "-h", "-N", "-o", "%N %t", check=False, timeout=20).stdout.split()
            return out == [node, "idle"]

        _wait(node_idle, timeout, f"node {node} idle in sinfo", cluster)
        hosts = cluster.run("srun", "-n2", "-t", "1", "hostname", timeout=60).stdout.split()
        if hosts != [node, node]:
            raise RuntimeError(f"srun -n2 hostname printed {hosts}\n{cluster.logs()}")
    except BaseException:
        cluster.stop()
        raise
    cluster.startup_s = time.monotonic() - started
    return cluster


def _wait(condition, timeout: float, what: str, cluster: SlurmCluster) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} after {timeout:.0f} s\n{cluster.logs()}")
        time.sleep(0.5)


@pytest.fixture(scope="session")
def slurm_cluster():
    """A running one-node cluster for the session (skips when Slurm is not installed); stopped,
    with all its jobs' processes, at the end."""
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    cluster = start_cluster(Path(tempfile.mkdtemp(prefix="aotrain-slurm-")))
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(cluster.folder, ignore_errors=True)


if __name__ == "__main__":
    reason = unavailable()
    if reason:
        raise SystemExit(reason)
    c = start_cluster(Path(tempfile.mkdtemp(prefix="aotrain-slurm-")))
    print(f"cluster up in {c.startup_s:.1f} s (node {c.node}, {c.cpus} CPUs)\nexport SLURM_CONF={c.conf}",
          flush=True)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # `kill PID` stops it as Ctrl-C does
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        c.stop()
        shutil.rmtree(c.folder, ignore_errors=True)
