"""Runs a busgen_jax job on every worker of a Cloud TPU VM slice with plain `gcloud`.

    python launch/tpu_vm.py --name=busgen-v5e --zone=us-west4-a --accelerator-type=v5litepod-16 \
        --create --job=pretrain --config=configs/pretrain.py:busgen \
        --workdir=gs://BUCKET/busgen/runs/pretrain/busgen --dry-run -- --config.train.steps=200000

Steps, each one `gcloud` command (printed one per line by `--dry-run`, run in order otherwise):
create the slice (`--create`); ship the committed source tree (`git archive`, `scp --worker=all`)
and `pip install` it with `jax[tpu]` on every worker, or pull `--image` there; mount every bucket
that a gs:// workdir or override names at /gcs/BUCKET (Cloud Storage FUSE); start the same
command on every worker with `ssh --worker=all`, each worker teeing its output to
`~/busgen_logs/<run>.log`; copy each worker's log back to `--log-dir/worker-<i>.log`; delete the
slice (`--delete`). Job config overrides follow a `--`.

Every worker runs the identical command: on a TPU VM `jax.distributed.initialize()` needs no
arguments, it reads the coordinator address, process count and process id of this worker from the
TPU metadata server. The launcher only sets BUSGEN_DISTRIBUTED=1 on multi-host slices so the job
knows to call it.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import pathlib
import re
import shlex
import subprocess
import sys
from collections.abc import Sequence

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
# `python launch/tpu_vm.py` puts launch/ (not the repo) on sys.path; the job table lives in the repo.
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from busgen_jax.cli import JOBS  # noqa: E402

# Accelerator-type name -> (xmanager resource name, default runtime image, TensorCores per chip).
# The number in `v4-32` counts TensorCores for v2-v5p and chips for v5e/v6e.
GENERATIONS = {
    "v2": ("tpu_v2", "tpu-ubuntu2204-base", 2),
    "v3": ("tpu_v3", "tpu-ubuntu2204-base", 2),
    "v4": ("tpu_v4", "tpu-ubuntu2204-base", 2),
    "v5p": ("tpu_v5p", "v2-alpha-tpuv5", 2),
    "v5litepod": ("tpu_v5e", "v2-alpha-tpuv5-lite", 1),
    "v6e": ("tpu_v6e", "v2-alpha-tpuv6e", 1),
}
_THREE_D = ("v4", "v5p")
CHIPS_PER_HOST = 4
# v5e / v6e slices of up to 8 chips are one VM; larger slices have 4 chips per VM.
_SINGLE_HOST_MAX_CHIPS = {"v5litepod": 8, "v6e": 8}
REMOTE_SOURCE = "busgen_jax"
REMOTE_ARCHIVE = "busgen_jax-src.tar.gz"
REMOTE_LOGS = "busgen_logs"
PIP_INSTALL = ["python3", "-m", "pip", "install", "--quiet", "-e"]
# Buckets are mounted here with Cloud Storage FUSE, where Vertex AI mounts them too: the jobs
# read and write local paths (ArrayRecord cannot open gs:// URLs), so gs://BUCKET/x in a
# workdir or override reaches the job as /gcs/BUCKET/x.
GCS_MOUNT_ROOT = "/gcs"
_GCS_URL = re.compile(r"gs://([A-Za-z0-9][\w.-]*)")
# --privileged exposes the TPU devices (/dev/accel*, /dev/vfio); --net=host lets the JAX
# coordinator on worker 0 and the metadata server be reached as from the VM itself; the bucket
# mounts are passed through at the same paths.
DOCKER_RUN = [
    "sudo",
    "docker",
    "run",
    "--rm",
    "--privileged",
    "--net=host",
    "-v",
    f"{GCS_MOUNT_ROOT}:{GCS_MOUNT_ROOT}",
]


class LaunchError(ValueError):
    """A launch request that cannot work; the message names the flag."""


@dataclasses.dataclass(frozen=True)
class TpuSlice:
    accelerator: str  # gcloud accelerator type, e.g. v5litepod-16
    generation: str  # e.g. v5litepod
    chips: int
    hosts: int  # TPU VM workers = JAX processes
    topology: str  # e.g. 4x4 or 2x2x4

    @property
    def xm_resource(self) -> str:
        return GENERATIONS[self.generation][0]

    @property
    def runtime_version(self) -> str:
        return GENERATIONS[self.generation][1]


def default_topology(generation: str, chips: int) -> str:
    """The standard slice shape of `chips` chips: 2-D tori for v2/v3/v5e/v6e, 3-D for v4/v5p."""
    if chips & (chips - 1):
        raise LaunchError(f"no standard topology for {chips} chips; pass --topology")
    exponent = chips.bit_length() - 1
    if generation in _THREE_D:
        if exponent < 3:  # 4 chips: Google names the single-host cube 2x2x1.
            return "x".join(str(2**e) for e in (1, 1, exponent - 2))
        dims = [exponent // 3] * 3
        for i in range(exponent % 3):
            dims[2 - i] += 1
        return "x".join(str(2**e) for e in dims)
    return f"{2 ** (exponent // 2)}x{2 ** (exponent - exponent // 2)}"


def parse_accelerator(accelerator: str, topology: str | None = None) -> TpuSlice:
    """Chips, hosts and topology of a gcloud accelerator type such as `v4-32` or `v5litepod-16`."""
    match = re.fullmatch(r"(v\d[a-z]*)-(\d+)", accelerator or "")
    if not match or match.group(1) not in GENERATIONS:
        raise LaunchError(
            f"accelerator type '{accelerator}' is not one of "
            f"{', '.join(g + '-N' for g in GENERATIONS)}"
        )
    generation, count = match.group(1), int(match.group(2))
    cores_per_chip = GENERATIONS[generation][2]
    if count < 1 or count % cores_per_chip:
        raise LaunchError(f"accelerator type '{accelerator}': bad core/chip count {count}")
    chips = count // cores_per_chip
    if generation in _SINGLE_HOST_MAX_CHIPS and chips <= _SINGLE_HOST_MAX_CHIPS[generation]:
        hosts = 1
    elif chips % CHIPS_PER_HOST:
        raise LaunchError(f"accelerator type '{accelerator}': {chips} chips do not fill hosts")
    else:
        hosts = chips // CHIPS_PER_HOST
    topology = topology or default_topology(generation, chips)
    dims = topology.split("x")
    rank = 3 if generation in _THREE_D else 2
    if not all(d.isdigit() for d in dims) or len(dims) != rank:
        shape = "AxBxC" if rank == 3 else "AxB"
        raise LaunchError(f"--topology '{topology}' of {accelerator} must be {rank}-D: {shape}")
    if math.prod(map(int, dims)) != chips:
        raise LaunchError(
            f"--topology '{topology}' does not have the {chips} chips of {accelerator}"
        )
    return TpuSlice(accelerator, generation, chips, hosts, topology)


def check_hosts(tpu: TpuSlice, hosts: int | None) -> None:
    if hosts is not None and hosts != tpu.hosts:
        raise LaunchError(
            f"--hosts={hosts} does not match {tpu.accelerator}, which has {tpu.hosts} host(s)"
        )


def resolve_job(job: str) -> str:
    """The module of a job given by its `busgen` subcommand (`pretrain`) or module (`train_classifier`)."""
    if not job:
        raise LaunchError(f"--job is required (one of: {', '.join(JOBS)})")
    modules = {name: module for name, (module, _) in JOBS.items()}
    modules.update({module.rsplit(".", 1)[1]: module for module in modules.values()})
    if job not in modules:
        raise LaunchError(f"unknown job '{job}' (choose one of: {', '.join(JOBS)})")
    return modules[job]


def on_gcs(path: str) -> bool:
    return path.startswith(("gs://", f"{GCS_MOUNT_ROOT}/"))


def gcs_buckets(texts: Sequence[str]) -> list[str]:
    """The buckets that gs:// URLs in `texts` name."""
    return sorted({bucket for text in texts for bucket in _GCS_URL.findall(text)})


def mounted(text: str) -> str:
    """gs://BUCKET/x -> /gcs/BUCKET/x, everywhere in `text`."""
    return _GCS_URL.sub(lambda m: f"{GCS_MOUNT_ROOT}/{m.group(1)}", text)


def job_argv(
    job: str, workdir: str, config: str | None, overrides: Sequence[str], hosts: int
) -> list[str]:
    """The command every worker runs: `python3 -m busgen_jax.jobs.<job> --config --workdir ...`,
    with gs:// URLs turned into their mount paths."""
    module = resolve_job(job)
    if not workdir:
        raise LaunchError("--workdir is required (a gs:// path shared by all hosts)")
    if hosts > 1 and not on_gcs(workdir):
        raise LaunchError(
            f"--workdir '{workdir}' must be a gs:// path: all {hosts} hosts write checkpoints there"
        )
    for override in overrides:
        if not re.fullmatch(r"--config\.[\w.]+=.*", override, flags=re.DOTALL):
            raise LaunchError(f"override '{override}' is not of the form --config.<field>=<value>")
    config_args = [f"--config={config}"] if config else []
    args = [*config_args, f"--workdir={workdir}", *overrides]
    return ["python3", "-m", module, *map(mounted, args)]


def mount_script(buckets: Sequence[str]) -> str:
    """The shell line that mounts each bucket at /gcs/BUCKET on a worker (installing gcsfuse
    when the image lacks it); a bucket already mounted is left alone.

    No metadata cache, so every host sees the files the others write at once (orbax commits,
    synthesis shards and manifest); --rename-dir-limit lets orbax commit a checkpoint by renaming
    its temporary directory; allow_other lets a container's root user use the mount.
    """
    install = (
        'command -v gcsfuse >/dev/null || { echo "deb https://packages.cloud.google.com/apt '
        'gcsfuse-$(lsb_release -cs) main" | sudo tee /etc/apt/sources.list.d/gcsfuse.list '
        ">/dev/null && curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo "
        "tee /etc/apt/trusted.gpg.d/gcsfuse.asc >/dev/null && sudo apt-get update -qq && "
        "sudo apt-get install -y -qq gcsfuse; }"
    )
    gcsfuse = [
        "sudo",
        "gcsfuse",
        "--implicit-dirs",
        "--rename-dir-limit=1000000",
        "--metadata-cache-ttl-secs=0",
        "-o",
        "allow_other",
    ]
    owner = '--uid="$(id -u)" --gid="$(id -g)"'  # the ssh user owns the files, not root
    mounts = []
    for bucket in buckets:
        path = f"{GCS_MOUNT_ROOT}/{bucket}"
        command = f"{shlex.join(gcsfuse)} {owner} {shlex.join([bucket, path])}"
        quoted = shlex.quote(path)
        mounts.append(f"sudo mkdir -p {quoted} && (mountpoint -q {quoted} || {command})")
    return " && ".join([install, *mounts])


def worker_env(hosts: int) -> dict[str, str]:
    env = {"PYTHONUNBUFFERED": "1"}
    if hosts > 1:
        env["BUSGEN_DISTRIBUTED"] = "1"
    return env


def worker_script(argv: Sequence[str], env: dict[str, str], log: str, image: str | None) -> str:
    """The shell line run on each worker: the job, its output teed to the worker's own log.

    `gcloud ... ssh --command` runs it in the login shell, bash on TPU VM images; pipefail makes
    the job's exit status, not tee's, the status of the ssh command.
    """
    if image:
        env_flags = [f for key, value in env.items() for f in ("--env", f"{key}={value}")]
        command = shlex.join([*DOCKER_RUN, *env_flags, image, *argv])
    else:
        env_args = [f"{key}={value}" for key, value in env.items()]
        command = f"cd {REMOTE_SOURCE} && {shlex.join(['env', *env_args, *argv])}"
    log_path = shlex.quote(f"{REMOTE_LOGS}/{log}.log")
    return f"set -o pipefail && mkdir -p {REMOTE_LOGS} && ({command}) 2>&1 | tee {log_path}"


def install_script(image: str | None) -> str:
    if image:
        registry = image.split("/", 1)[0]
        pull = shlex.join(["sudo", "docker", "pull", image])
        if "." not in registry:  # Docker Hub needs no credentials helper.
            return pull
        return f"{shlex.join(['sudo', 'gcloud', 'auth', 'configure-docker', registry, '--quiet'])} && {pull}"
    return " && ".join(
        [
            f"rm -rf {REMOTE_SOURCE}",
            f"tar -xzf {REMOTE_ARCHIVE}",
            "python3 -m pip install --quiet --upgrade pip",
            shlex.join([*PIP_INSTALL, f"./{REMOTE_SOURCE}", "jax[tpu]"]),
        ]
    )


def _gcloud(args: argparse.Namespace, verb: str, *positional: str, extra: Sequence[str] = ()):
    project = [f"--project={args.project}"] if args.project else []
    return [
        "gcloud",
        "compute",
        "tpus",
        "tpu-vm",
        verb,
        *positional,
        f"--zone={args.zone}",
        *project,
        *extra,
    ]


@dataclasses.dataclass(frozen=True)
class Plan:
    """Commands in order: `setup` and `run` stop at the first failure, `teardown` always runs."""

    setup: list[list[str]]
    run: list[list[str]]
    teardown: list[list[str]]
    log_dir: pathlib.Path  # local: the source archive and the workers' logs

    def commands(self) -> list[list[str]]:
        return [*self.setup, *self.run, *self.teardown]


def make_plan(args: argparse.Namespace, overrides: Sequence[str]) -> Plan:
    """Every command of a launch, from parsed flags; raises LaunchError on a bad request."""
    tpu = parse_accelerator(args.accelerator_type, args.topology)
    check_hosts(tpu, args.hosts)
    argv = job_argv(args.job, args.workdir, args.config, overrides, tpu.hosts)
    if args.image and not on_gcs(args.workdir):
        raise LaunchError(
            f"--workdir '{args.workdir}' must be a gs:// path with --image: "
            "the container's disk is discarded when the job ends"
        )
    run_name = args.run_name or args.job
    if not re.fullmatch(r"[\w.-]+", run_name):
        raise LaunchError(f"--run-name '{run_name}' may only hold letters, digits, '.', '_', '-'")
    log_dir = pathlib.Path(args.log_dir or f"launch_logs/{args.name}/{run_name}")
    setup = []
    if args.create:
        version = f"--version={args.version or tpu.runtime_version}"
        setup.append(
            _gcloud(
                args, "create", args.name, extra=[f"--accelerator-type={tpu.accelerator}", version]
            )
        )
    if not args.no_install:
        if not args.image:
            archive = str(log_dir / "source.tar.gz")
            git_archive = ["git", "-C", str(args.source), "archive", "--format=tar.gz"]
            setup.append(
                [*git_archive, f"--prefix={REMOTE_SOURCE}/", f"--output={archive}", args.ref]
            )
            remote = f"{args.name}:{REMOTE_ARCHIVE}"
            setup.append(_gcloud(args, "scp", archive, remote, extra=["--worker=all"]))
        install = f"--command={install_script(args.image)}"
        setup.append(_gcloud(args, "ssh", args.name, extra=["--worker=all", install]))
    buckets = gcs_buckets([args.workdir, *overrides])
    if buckets:  # every launch: mounts do not survive a restart of the VMs
        mount = f"--command={mount_script(buckets)}"
        setup.append(_gcloud(args, "ssh", args.name, extra=["--worker=all", mount]))
    script = worker_script(argv, worker_env(tpu.hosts), run_name, args.image)
    run = [_gcloud(args, "ssh", args.name, extra=["--worker=all", f"--command={script}"])]
    remote_log = f"{args.name}:{REMOTE_LOGS}/{run_name}.log"
    teardown = [
        _gcloud(args, "scp", remote_log, str(log_dir / f"worker-{i}.log"), extra=[f"--worker={i}"])
        for i in range(tpu.hosts)
    ]
    if args.delete:
        teardown.append(_gcloud(args, "delete", args.name, extra=["--quiet"]))
    return Plan(setup, run, teardown, log_dir)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage block
        raise LaunchError(message)


def make_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="tpu_vm.py",
        description=__doc__.split("\n\n")[0],
        usage="%(prog)s --name NAME --zone ZONE --accelerator-type TYPE --job JOB --workdir DIR "
        "[options] [-- --config.FIELD=VALUE ...]",
    )
    add = parser.add_argument
    add("--name", required=True, help="TPU VM (slice) name")
    add("--zone", required=True, help="e.g. us-west4-a")
    add("--project", help="GCP project (default: gcloud's)")
    add("--accelerator-type", required=True, help="e.g. v4-32, v5litepod-16, v5p-64, v6e-16")
    add("--topology", help="chip topology, e.g. 4x4 or 2x2x4 (default: the standard one)")
    add("--hosts", type=int, help="expected number of hosts; checked against the accelerator")
    add("--version", help="TPU runtime version for --create (default: per generation)")
    add("--create", action="store_true", help="create the TPU VM slice first")
    add("--delete", action="store_true", help="delete the slice when the job ends")
    add("--job", required=True, help=f"one of: {', '.join(JOBS)}")
    add("--config", help="job config, e.g. configs/pretrain.py:busgen (default: the job's)")
    add("--workdir", help="job workdir, gs://BUCKET/busgen/runs/<job>/<name>")
    add("--image", help="run this Docker image on the workers instead of the source tree")
    add("--source", default=str(REPO_ROOT), help="git checkout to ship (default: this repo)")
    add("--ref", default="HEAD", help="git ref of --source to ship")
    add("--no-install", action="store_true", help="reuse the code already on the workers")
    add("--run-name", help="log name on the workers (default: the job)")
    add("--log-dir", help="where worker logs are copied (default: launch_logs/NAME/RUN)")
    add("--dry-run", action="store_true", help="print the commands, one per line; run nothing")
    return parser


def split_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Splits `[flags] -- [job overrides]`."""
    argv = list(argv)
    if "--" not in argv:
        return argv, []
    i = argv.index("--")
    return argv[:i], argv[i + 1 :]


def execute(plan: Plan) -> int:
    """Runs the plan; the first failing setup/run command stops those, teardown always runs."""
    plan.log_dir.mkdir(parents=True, exist_ok=True)
    status = 0
    for command in [*plan.setup, *plan.run]:
        print(f"+ {shlex.join(command)}", flush=True)
        status = subprocess.run(command, check=False).returncode
        if status:
            print(f"error: exit status {status}: {shlex.join(command)}", file=sys.stderr)
            break
    for command in plan.teardown:
        print(f"+ {shlex.join(command)}", flush=True)
        subprocess.run(command, check=False)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    flags, overrides = split_overrides(sys.argv[1:] if argv is None else argv)
    try:
        args = make_parser().parse_args(flags)
        plan = make_plan(args, overrides)
    except LaunchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        print("\n".join(shlex.join(command) for command in plan.commands()))
        return 0
    return execute(plan)


if __name__ == "__main__":
    sys.exit(main())
