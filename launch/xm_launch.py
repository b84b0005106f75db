r"""XManager launch script: one busgen_jax job on a Cloud TPU slice, as an XManager experiment.

    xmanager launch launch/xm_launch.py -- --job=pretrain --accelerator_type=v5litepod-16 \
        --name=busgen-v5e --zone=us-west4-a --create \
        --config=configs/pretrain.py:busgen --workdir=gs://BUCKET/busgen/runs/pretrain/busgen \
        -- --config.train.steps=200000
    python launch/xm_launch.py --dry_run ...   # same flags; prints the plan, needs no xmanager

Backends (`--backend`):
  tpu_vm  (default) the experiment's job runs launch/tpu_vm.py on this machine (`xm_local.Local`),
          which ships the code to every worker of the TPU VM slice and starts the job there with
          `gcloud ... ssh --worker=all`. Works for every TPU generation (v2 to v6e).
  vertex  a Vertex AI custom job (`xm_local.Vertex`) from `--image` or a `xm.PythonContainer`
          built from the committed source. xmanager's Vertex executor maps only TPU v2/v3, so
          this backend takes v2-8 or v3-8.

`--dry_run` prints the executable, executor, requirements and the command of every worker without
importing xmanager; `pip install busgen_jax[launch]` (xmanager) is needed only to launch.
"""

from __future__ import annotations

import dataclasses
import pathlib
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Sequence

from absl import app, flags

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
# `xmanager launch launch/xm_launch.py` imports this file as a top-level module.
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from launch import tpu_vm  # noqa: E402

BACKENDS = ("tpu_vm", "vertex")
_VERTEX_ACCELERATORS = ("v2-8", "v3-8")
DEFAULT_BASE_IMAGE = "python:3.11-slim"

_JOB = flags.DEFINE_string("job", None, "Job to run, e.g. pretrain, adapt, synthesize.")
_ACCELERATOR = flags.DEFINE_string("accelerator_type", None, "TPU type, e.g. v4-32, v5litepod-16.")
_TOPOLOGY = flags.DEFINE_string("topology", None, "Chip topology, e.g. 4x4 (default: standard).")
_HOSTS = flags.DEFINE_integer("hosts", None, "Expected number of hosts, checked.")
_CONFIG = flags.DEFINE_string("config", None, "Job config, e.g. configs/pretrain.py:busgen.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Job workdir (gs://BUCKET/busgen/runs/...).")
_BACKEND = flags.DEFINE_enum("backend", "tpu_vm", BACKENDS, "Where the job runs.")
_NAME = flags.DEFINE_string("name", None, "TPU VM slice name (tpu_vm backend).")
_ZONE = flags.DEFINE_string("zone", None, "TPU zone (tpu_vm backend).")
_PROJECT = flags.DEFINE_string("project", None, "GCP project (default: gcloud's).")
_CREATE = flags.DEFINE_bool("create", False, "Create the TPU VM slice first (tpu_vm backend).")
_DELETE = flags.DEFINE_bool("delete", False, "Delete the slice afterwards (tpu_vm backend).")
_IMAGE = flags.DEFINE_string("image", None, "Prebuilt Docker image instead of the source tree.")
_SOURCE = flags.DEFINE_string("source", str(REPO_ROOT), "Git checkout whose commit is shipped.")
_REF = flags.DEFINE_string("ref", "HEAD", "Git ref of --source to ship.")
_BASE_IMAGE = flags.DEFINE_string("base_image", DEFAULT_BASE_IMAGE, "Base image (vertex).")
_TITLE = flags.DEFINE_string("title", None, "Experiment title (default: job and accelerator).")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print the plan; import nothing, launch nothing.")


@dataclasses.dataclass(frozen=True)
class XmPlan:
    """What one launch runs; `describe` prints it and `launch` turns it into xm objects."""

    title: str
    backend: str
    tpu: tpu_vm.TpuSlice
    worker_argv: list[str]  # identical on every worker
    env: dict[str, str]
    image: str | None
    source: str
    ref: str
    base_image: str
    launcher_argv: list[str] | None = None  # tpu_vm backend: the local command XManager runs
    tpu_vm_plan: tpu_vm.Plan | None = None

    def requirements(self) -> dict[str, str | int]:
        """`xm.JobRequirements` keyword arguments of the TPU (Vertex counts v2/v3 in cores)."""
        if self.backend == "vertex":
            cores = self.tpu.chips * tpu_vm.GENERATIONS[self.tpu.generation][2]
            return {self.tpu.xm_resource: cores}
        return {self.tpu.xm_resource: self.tpu.topology}


def build_plan(
    *,
    job: str,
    accelerator: str,
    workdir: str | None,
    config: str | None = None,
    overrides: Sequence[str] = (),
    topology: str | None = None,
    hosts: int | None = None,
    backend: str = "tpu_vm",
    name: str | None = None,
    zone: str | None = None,
    project: str | None = None,
    create: bool = False,
    delete: bool = False,
    image: str | None = None,
    source: str = str(REPO_ROOT),
    ref: str = "HEAD",
    base_image: str = DEFAULT_BASE_IMAGE,
    title: str | None = None,
) -> XmPlan:
    """Validates a launch request and returns its plan; raises tpu_vm.LaunchError."""
    if backend not in BACKENDS:
        raise tpu_vm.LaunchError(f"--backend '{backend}' is not one of {', '.join(BACKENDS)}")
    tpu = tpu_vm.parse_accelerator(accelerator, topology)
    tpu_vm.check_hosts(tpu, hosts)
    argv = tpu_vm.job_argv(job, workdir, config, overrides, tpu.hosts)
    common = dict(
        title=title or f"busgen {job} on {accelerator}",
        backend=backend,
        tpu=tpu,
        worker_argv=argv,
        env=tpu_vm.worker_env(tpu.hosts),
        image=image,
        source=source,
        ref=ref,
        base_image=base_image,
    )
    if backend == "vertex":
        if accelerator not in _VERTEX_ACCELERATORS:
            raise tpu_vm.LaunchError(
                f"--backend=vertex takes {' or '.join(_VERTEX_ACCELERATORS)} (xmanager's Vertex "
                f"executor maps only TPU v2/v3); use --backend=tpu_vm for {accelerator}"
            )
        if not workdir.startswith("gs://"):
            raise tpu_vm.LaunchError(f"--workdir '{workdir}' must be a gs:// path on Vertex AI")
        return XmPlan(**common)
    if not name or not zone:
        raise tpu_vm.LaunchError("--backend=tpu_vm needs --name (the TPU VM) and --zone")
    optional = {"--project": project, "--topology": topology, "--config": config, "--image": image}
    flags_ = [f"--name={name}", f"--zone={zone}", f"--accelerator-type={accelerator}"]
    flags_ += [f"{flag}={value}" for flag, value in optional.items() if value]
    flags_ += [f"--job={job}", f"--workdir={workdir}", f"--source={source}", f"--ref={ref}"]
    flags_ += ["--create"] * create + ["--delete"] * delete
    launcher_plan = tpu_vm.make_plan(tpu_vm.make_parser().parse_args(flags_), overrides)
    launcher = [sys.executable, str(REPO_ROOT / "launch" / "tpu_vm.py"), *flags_, "--", *overrides]
    return XmPlan(**common, launcher_argv=launcher, tpu_vm_plan=launcher_plan)


def describe(plan: XmPlan) -> str:
    """The dry-run text: executable, executor, requirements, then one line per worker."""
    kwargs = ", ".join(f"{key}={value!r}" for key, value in plan.requirements().items())
    requirements = f"xm.JobRequirements({kwargs})"
    module = plan.worker_argv[2]
    if plan.backend == "tpu_vm":
        executable = f"xm.binary(path={sys.executable!r}, args=<launcher[1:]>)"
        executor = "xm_local.Local()"
        requirements += f", met by the TPU VM slice {plan.tpu.accelerator} that gcloud runs on"
    elif plan.image:
        executable = f"xm.container(image_path={plan.image!r})"
        executor = f"xm_local.Vertex(requirements={requirements})"
    else:
        executable = (
            f"xm.python_container(path=<git archive {plan.ref} of {plan.source}>, "
            f"base_image={plan.base_image!r}, entrypoint=xm.ModuleName({module!r}))"
        )
        executor = f"xm_local.Vertex(requirements={requirements})"
    lines = [
        f"title: {plan.title}",
        f"backend: {plan.backend}",
        f"executable: {executable}",
        f"executor: {executor}",
        f"requirements: {requirements}",
        f"slice: {plan.tpu.chips} chips, topology {plan.tpu.topology}, {plan.tpu.hosts} host(s)",
    ]
    if plan.launcher_argv:
        lines.append(f"launcher: {shlex.join(plan.launcher_argv)}")
        lines += [f"step: {shlex.join(c)}" for c in plan.tpu_vm_plan.commands()]
    env = [f"{key}={value}" for key, value in plan.env.items()]
    command = shlex.join(["env", *env, *plan.worker_argv])
    lines += [f"worker {i}: {command}" for i in range(plan.tpu.hosts)]
    return "\n".join(lines)


def _export_source(source: str, ref: str, into: str) -> str:
    """The committed tree of `source` at `ref` as `into/busgen_jax`: no venv, no workdirs."""
    archive = subprocess.run(
        ["git", "-C", source, "archive", "--format=tar", f"--prefix={tpu_vm.REMOTE_SOURCE}/", ref],
        check=True,
        capture_output=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", into], input=archive, check=True)
    return str(pathlib.Path(into) / tpu_vm.REMOTE_SOURCE)


def launch(plan: XmPlan) -> None:
    """Creates the experiment and adds the job (imports xmanager, talks to the cloud)."""
    from xmanager import xm, xm_local

    with xm_local.create_experiment(experiment_title=plan.title) as experiment:
        if plan.backend == "tpu_vm":
            packageable = xm.binary(
                executor_spec=xm_local.Local.Spec(),
                path=sys.executable,
                args=plan.launcher_argv[1:],
            )
            [executable] = experiment.package([packageable])
            experiment.add(xm.Job(executable, xm_local.Local()))
            return
        spec = xm_local.Vertex.Spec()
        executor = xm_local.Vertex(requirements=xm.JobRequirements(**plan.requirements()))
        if plan.image:
            # Vertex overrides the image's CMD with these args: the image must set no ENTRYPOINT.
            [executable] = experiment.package([xm.container(spec, image_path=plan.image)])
            experiment.add(xm.Job(executable, executor, args=plan.worker_argv, env_vars=plan.env))
            return
        with tempfile.TemporaryDirectory() as staging:
            project = _export_source(plan.source, plan.ref, staging)
            packageable = xm.python_container(
                spec,
                entrypoint=xm.ModuleName(plan.worker_argv[2]),
                path=project,
                base_image=plan.base_image,
                docker_instructions=[
                    "ENV LANG=C.UTF-8",
                    f"COPY {tpu_vm.REMOTE_SOURCE}/ /workdir/{tpu_vm.REMOTE_SOURCE}",
                    f"WORKDIR /workdir/{tpu_vm.REMOTE_SOURCE}",
                    "RUN python -m pip install --no-cache-dir -e . 'jax[tpu]'",
                ],
                use_deep_module=True,
            )
            [executable] = experiment.package([packageable])
        # ModuleName runs `python -m <module>`; the job gets the flags after it.
        job_args = plan.worker_argv[3:]
        experiment.add(xm.Job(executable, executor, args=job_args, env_vars=plan.env))


def main(argv: Sequence[str]) -> None:
    try:
        plan = build_plan(
            job=_JOB.value,
            accelerator=_ACCELERATOR.value,
            workdir=_WORKDIR.value,
            config=_CONFIG.value,
            overrides=list(argv[1:]),
            topology=_TOPOLOGY.value,
            hosts=_HOSTS.value,
            backend=_BACKEND.value,
            name=_NAME.value,
            zone=_ZONE.value,
            project=_PROJECT.value,
            create=_CREATE.value,
            delete=_DELETE.value,
            image=_IMAGE.value,
            source=_SOURCE.value,
            ref=_REF.value,
            base_image=_BASE_IMAGE.value,
            title=_TITLE.value,
        )
    except tpu_vm.LaunchError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    if _DRY_RUN.value:
        print(describe(plan))
        return
    launch(plan)


if __name__ == "__main__":
    app.run(main)
