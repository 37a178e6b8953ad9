"""infra/gcp.sh in dry-run mode: what it would create, grant and deploy, and that re-runs are safe."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from mountainid.config import ENV_NAMES
from tests.infra.commands import BASE_ENV, GCP_SCRIPT, REPO, Command, gcloud_commands, printed_lines, run_dry

PROJECT = BASE_ENV["PROJECT"]
BUCKET = f"{PROJECT}-mountainid"
SA = "mountainid-{}@" + PROJECT + ".iam.gserviceaccount.com"
READS = "roles/storage.objectViewer"
WRITES = "roles/storage.objectUser"
READ_ONLY_VERBS = {"describe", "list", "get-iam-policy", "service-agent"}
# Changes that are idempotent by the API's contract (declarative updates, deploy = create or update).
DECLARATIVE = {("storage", "buckets", "update"), ("functions", "deploy"), ("run", "deploy"),
               ("run", "jobs", "deploy"), ("beta", "run", "jobs", "deploy"),
               ("scheduler", "jobs", "update", "pubsub"), ("scheduler", "jobs", "update", "http")}


def commands(result: subprocess.CompletedProcess) -> list[Command]:
    return gcloud_commands(printed_lines(result.stdout))


def find(cmds: list[Command], *path: str) -> list[Command]:
    return [c for c in cmds if c.path == path]


def one(cmds: list[Command], *path: str, name: str | None = None) -> Command:
    found = [c for c in find(cmds, *path) if name is None or c.positionals[:1] == (name,)]
    assert len(found) == 1, f"expected one 'gcloud {' '.join(path)} {name or ''}', got {len(found)}"
    return found[0]


def env_vars(cmd: Command) -> dict[str, str]:
    """--set-env-vars=^@^A=1@B=2 -> {"A": "1", "B": "2"}."""
    raw = cmd.flag("--set-env-vars")
    assert raw.startswith("^@^"), raw
    return dict(pair.split("=", 1) for pair in raw[3:].split("@"))


def secret_refs(cmd: Command) -> dict[str, str]:
    return dict(pair.split("=", 1) for pair in cmd.flag("--set-secrets").split(","))


def bucket_grants(cmds: list[Command]) -> dict[tuple[str, str], set[str]]:
    """(service account, role) -> object prefixes its conditional binding on the bucket covers."""
    grants: dict[tuple[str, str], set[str]] = {}
    for cmd in find(cmds, "storage", "buckets", "add-iam-policy-binding"):
        if cmd.positionals != (f"gs://{BUCKET}",):
            continue  # Cloud Build's staging bucket, the CI data: test_the_deployer_may_read_what_its_build_reads
        condition = cmd.flag("--condition")
        assert condition.startswith("^;^expression="), f"unconditional bucket grant: {cmd.line}"
        expression = condition.split(";")[1].removeprefix("expression=")
        prefixes = set(re.findall(rf'resource\.name\.startsWith\("projects/_/buckets/{BUCKET}/objects/([^"]+)"\)',
                                  expression))
        listed = set(re.findall(r'objectListPrefix", ""\)\.startsWith\("([^"]+)"\)', expression))
        if cmd.flag("--role") != "roles/storage.objectCreator":
            assert listed == prefixes, f"listing not limited to the same prefixes: {cmd.line}"
        member = cmd.flag("--member").removeprefix("serviceAccount:")
        grants.setdefault((member, cmd.flag("--role")), set()).update(prefixes)
    return grants


def test_missing_project_is_a_clear_error() -> None:
    result = run_dry("bootstrap", env={"PROJECT": ""})
    assert result.returncode != 0
    assert "PROJECT is not set" in result.stderr
    assert result.stdout == ""


def test_unknown_command_and_secret_name_fail() -> None:
    assert run_dry("launch-rockets").returncode != 0
    result = run_dry("set-secret", "my-password")
    assert result.returncode != 0 and "set-secret needs one of" in result.stderr


def test_every_create_is_behind_a_lookup(fresh_run: subprocess.CompletedProcess) -> None:
    """A create only after a describe of the same thing; a grant only after reading the policy."""
    seen: list[Command] = []
    for cmd in commands(fresh_run):
        if cmd.verb in READ_ONLY_VERBS or cmd.path in DECLARATIVE:
            seen.append(cmd)
            continue
        target = cmd.positionals[0] if cmd.positionals else ""
        if cmd.verb == "create" or cmd.path[:3] == ("scheduler", "jobs", "create"):
            group = cmd.path[:cmd.path.index("create")]
            guard_verbs = {"describe", "list"}
        elif cmd.verb == "add-iam-policy-binding":
            group, guard_verbs = cmd.path[:-1], {"get-iam-policy"}
        elif cmd.path == ("services", "enable"):
            group, guard_verbs, target = ("services",), {"list"}, ""
        elif cmd.path == ("secrets", "versions", "add"):
            group, guard_verbs = ("secrets", "versions"), {"list"}
        else:
            pytest.fail(f"unguarded change: {cmd.line}")
        guarded = any(
            prior.path[:-1] == group and prior.verb in guard_verbs
            and (not target or prior.positionals[:1] == (target,)
                 or (prior.positionals and prior.positionals[0].startswith(target + "@")))
            for prior in seen)
        assert guarded, f"no lookup before: {cmd.line}"
        seen.append(cmd)


def test_rerun_on_existing_project_creates_nothing(again_run: subprocess.CompletedProcess) -> None:
    cmds = commands(again_run)
    assert not [c.line for c in cmds if "create" in c.path or c.path == ("services", "enable")]
    assert [c.line for c in find(cmds, "secrets", "versions", "add")] == [
        f"gcloud secrets versions add flickr-api-key --data-file=- --project={PROJECT}"]  # only set-secret
    assert {c.path for c in cmds if c.path[:2] == ("scheduler", "jobs") and c.verb != "describe"} == {
        ("scheduler", "jobs", "update", "pubsub"), ("scheduler", "jobs", "update", "http")}


def test_grant_skips_a_binding_the_policy_already_has() -> None:
    """The policy lookup in infra/lib.sh: same role, member and condition -> no second grant."""
    member = "serviceAccount:" + SA.format("web")
    policy = json.dumps({"bindings": [
        {"role": READS, "members": [member], "condition": {"expression": 'resource.name.startsWith("x")'}}]})
    script = f"""
        set -euo pipefail
        source {GCP_SCRIPT.parent / 'lib.sh'}
        require_settings
        POLICIES["storage buckets gs://b"]='{policy}'
        grant "storage buckets" gs://b {member} {READS} 'resource.name.startsWith("x")' same
        grant "storage buckets" gs://b {member} {READS} 'resource.name.startsWith("y")' other
    """
    result = subprocess.run(["bash", "-c", script], env={"PATH": os.environ["PATH"], **BASE_ENV, "DRY_RUN": "1"},
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert "already granted" in result.stderr
    granted = commands(result)
    assert len(granted) == 1 and 'startsWith("y")' in granted[0].flag("--condition")


def test_bucket_is_private_with_lifecycle_and_raw_notification(fresh_run: subprocess.CompletedProcess) -> None:
    cmds = commands(fresh_run)
    create = one(cmds, "storage", "buckets", "create", name=f"gs://{BUCKET}")
    assert {"--uniform-bucket-level-access", "--public-access-prevention"} <= create.flags.keys()
    update = one(cmds, "storage", "buckets", "update")
    assert "--no-versioning" in update.flags
    rules = json.loads(Path(update.flag("--lifecycle-file")).read_text())["rule"]
    deletes = {prefix: rule["condition"]["age"] for rule in rules if rule["action"]["type"] == "Delete"
               for prefix in rule["condition"]["matchesPrefix"]}
    # Only uploads expire. Never rejected/: the filter's catch-up counts a raw/ photo without a result
    # as pending, so expiring rejected/ would re-judge every rejected photo every 30 days.
    assert deletes == {"uploads/": 30}

    notify = one(cmds, "storage", "buckets", "notifications", "create")
    assert notify.flags["--topic"] == "raw-photos" and notify.flags["--object-prefix"] == "raw/"
    assert notify.flags["--event-types"] == "OBJECT_FINALIZE" and notify.flags["--payload-format"] == "json"
    publisher = one(cmds, "pubsub", "topics", "add-iam-policy-binding", name="raw-photos")
    assert publisher.flag("--member").endswith("@gs-project-accounts.iam.gserviceaccount.com")
    assert {c.positionals[0] for c in find(cmds, "pubsub", "topics", "create")} == {
        "ingest-tick", "raw-photos", "model-published"}


def test_each_service_account_reaches_only_its_prefixes(fresh_run: subprocess.CompletedProcess,
                                                         again_run: subprocess.CompletedProcess) -> None:
    expected = {
        (SA.format("ingest"), WRITES): {"raw/", "state/ingest/"},
        (SA.format("filter"), READS): {"raw/"},
        (SA.format("filter"), WRITES): {"accepted/", "rejected/", "embeddings/", "localfeatures/"},
        (SA.format("training"), READS): {"accepted/"},
        (SA.format("training"), WRITES): {"embeddings/", "localfeatures/", "models/", "state/training/"},
        (SA.format("web"), READS): {"models/", "accepted/", "localfeatures/"},  # keypoints of a big gallery
    }
    assert bucket_grants(commands(fresh_run)) == expected
    with_uploads = {**expected, (SA.format("web"), "roles/storage.objectCreator"): {"uploads/"}}
    assert bucket_grants(commands(again_run)) == with_uploads

    cmds = commands(fresh_run)
    project_roles = {(c.flag("--member"), c.flag("--role")) for c in find(cmds, "projects", "add-iam-policy-binding")}
    runtime = {f"serviceAccount:{SA.format(i)}" for i in ("ingest", "filter", "training", "web")}
    assert not {member for member, _ in project_roles} & runtime, "runtime accounts get no project-wide role"
    assert one(cmds, "pubsub", "topics", "add-iam-policy-binding", name="model-published").flag(
        "--member") == f"serviceAccount:{SA.format('training')}"
    accessors = {(c.positionals[0], c.flag("--member")) for c in find(cmds, "secrets", "add-iam-policy-binding")}
    assert accessors == {("flickr-api-key", f"serviceAccount:{SA.format('ingest')}"),
                         ("flickr-api-secret", f"serviceAccount:{SA.format('ingest')}"),
                         ("mountainid-admin-token", f"serviceAccount:{SA.format('web')}")}


def test_functions_are_private_and_the_web_is_public(fresh_run: subprocess.CompletedProcess) -> None:
    cmds = commands(fresh_run)
    for fn in find(cmds, "functions", "deploy"):
        assert "--no-allow-unauthenticated" in fn.flags and "--allow-unauthenticated" not in fn.flags
        assert fn.flags["--ingress-settings"] == "internal-only"
        assert fn.flags["--trigger-service-account"] == SA.format("trigger")
    invokers = {(c.positionals[0], c.flag("--member")) for c in find(cmds, "run", "services", "add-iam-policy-binding")}
    trigger = f"serviceAccount:{SA.format('trigger')}"
    assert invokers == {("mountainid-ingest", trigger), ("mountainid-filter", trigger)}
    assert "allUsers" not in fresh_run.stdout
    web = one(cmds, "run", "deploy")
    assert "--allow-unauthenticated" in web.flags and web.flags["--service-account"] == SA.format("web")


def test_function_deploys(fresh_run: subprocess.CompletedProcess) -> None:
    cmds = commands(fresh_run)
    ingest = one(cmds, "functions", "deploy", name="mountainid-ingest")
    filter_fn = one(cmds, "functions", "deploy", name="mountainid-filter")
    for fn, entry, topic, name in ((ingest, "ingest", "ingest-tick", "ingest"),
                                   (filter_fn, "filter_photo", "raw-photos", "filter")):
        assert "--gen2" in fn.flags and fn.flags["--runtime"] == "python311"
        assert fn.flags["--entry-point"] == entry and fn.flags["--trigger-topic"] == topic
        assert fn.flags["--service-account"] == SA.format(name)
        assert fn.flags["--source"].endswith(f"/{name}")
        assert env_vars(fn)["MOUNTAINID_BUCKET"] == f"gs://{BUCKET}"
        assert env_vars(fn)["GOOGLE_CLOUD_PROJECT"] == PROJECT
    staging = [words for words in printed_lines(fresh_run.stdout) if words[0].endswith("stage-function.sh")]
    assert [words[1] for words in staging] == ["ingest", "filter"]
    assert secret_refs(ingest) == {"FLICKR_API_KEY": "flickr-api-key:latest",
                                   "FLICKR_API_SECRET": "flickr-api-secret:latest"}
    assert filter_fn.flags["--memory"] == "2Gi" and "--retry" in filter_fn.flags
    assert env_vars(filter_fn)["MOUNTAINID_WEIGHTS"] == "imagenet"


def test_training_job_web_and_schedules(fresh_run: subprocess.CompletedProcess) -> None:
    cmds = commands(fresh_run)
    job = one(cmds, "run", "jobs", "deploy", name="mountainid-training")
    assert job.flags["--image"] == f"europe-west1-docker.pkg.dev/{PROJECT}/mountainid/training:b1234"
    assert job.flags["--tasks"] == "1" and job.flags["--task-timeout"] == "3600s"
    assert job.flags["--args"] == "--tier,finetune" and "--gpu" not in job.flags  # the CPU recipe on a CPU
    assert env_vars(job)["MOUNTAINID_EVENTS"] == "pubsub"
    assert env_vars(job)["MOUNTAINID_TOPIC_MODEL_PUBLISHED"] == "model-published"
    web = one(cmds, "run", "deploy")
    assert web.flags["--image"] == f"europe-west1-docker.pkg.dev/{PROJECT}/mountainid/web:b1234"
    assert secret_refs(web) == {"MOUNTAINID_ADMIN_TOKEN": "mountainid-admin-token:latest"}

    tick = one(cmds, "scheduler", "jobs", "create", "pubsub", name="mountainid-ingest-tick")
    assert tick.flags["--topic"] == f"projects/{PROJECT}/topics/ingest-tick" and tick.flags["--schedule"] == "0 * * * *"
    train = one(cmds, "scheduler", "jobs", "create", "http")
    assert train.flags["--uri"] == (f"https://run.googleapis.com/v2/projects/{PROJECT}/locations/europe-west1/"
                                    "jobs/mountainid-training:run")
    assert train.flags["--http-method"] == "POST"
    assert train.flags["--oauth-service-account-email"] == SA.format("scheduler")
    invoker = one(cmds, "run", "jobs", "add-iam-policy-binding")
    assert invoker.flag("--member") == f"serviceAccount:{SA.format('scheduler')}"
    assert invoker.flag("--role") == "roles/run.invoker"
    assert printed_lines(fresh_run.stdout)[-1] == [
        "curl", "-sS", "--max-time", "20", "https://mountainid-web-dry-run.a.run.app/health"]


def test_backfill_job_runs_the_training_image_in_parallel_tasks(fresh_run: subprocess.CompletedProcess,
                                                                again_run: subprocess.CompletedProcess) -> None:
    """Each task backfills its own shard (Cloud Run sets CLOUD_RUN_TASK_INDEX/COUNT), as the training account,
    which may write both caches; it is run on demand, so nothing schedules it."""
    for run in (fresh_run, again_run):
        job = one(commands(run), "run", "jobs", "deploy", name="mountainid-backfill")
        assert job.flags["--image"] == f"europe-west1-docker.pkg.dev/{PROJECT}/mountainid/training:b1234"
        assert (job.flags["--command"], job.flags["--args"]) == ("mountainid", "backfill")
        assert job.flags["--tasks"] == "10" and int(job.flags["--max-retries"]) > 0
        assert job.flags["--service-account"] == SA.format("training")
        assert env_vars(job)["MOUNTAINID_WEIGHTS"] == "imagenet"
        assert "backfill" not in " ".join(c.line for c in commands(run) if c.path[0] == "scheduler")
    assert {"embeddings/", "localfeatures/"} <= bucket_grants(commands(fresh_run))[(SA.format("training"), WRITES)]
    wider = run_dry("deploy-backfill", env={"BACKFILL_TASKS": "40"})
    assert one(commands(wider), "run", "jobs", "deploy").flags["--tasks"] == "40"


def test_gpu_training_and_tuning_pass_through(again_run: subprocess.CompletedProcess) -> None:
    cmds = commands(again_run)
    job = one(cmds, "beta", "run", "jobs", "deploy")
    assert job.flags["--gpu"] == "1" and job.flags["--gpu-type"] == "nvidia-l4"
    assert job.flags["--args"] == "--tier,gpu"  # the recipe a GPU affords
    ingest_env = env_vars(one(cmds, "functions", "deploy", name="mountainid-ingest"))
    assert (ingest_env["MOUNTAINID_LICENSES"], ingest_env["MOUNTAINID_INGEST_MAX_ATTEMPTS"],
            ingest_env["MOUNTAINID_INGEST_SEARCH_PAGES"]) == ("4,5,9", "7", "3")
    filter_env = env_vars(one(cmds, "functions", "deploy", name="mountainid-filter"))
    assert (filter_env["MOUNTAINID_FILTER_THRESHOLD"], filter_env["MOUNTAINID_CATCH_UP_LIMIT"]) == ("0.4", "100")
    assert filter_env["MOUNTAINID_WEIGHTS"] == "imagenet"  # never the operator's local weights path
    web_env = env_vars(one(cmds, "run", "deploy"))
    assert web_env["MOUNTAINID_STORE_UPLOADS"] == "true"
    assert web_env["MOUNTAINID_LICENSES"] == "4,5,9"  # the model page shows the licences the ingest takes
    assert web_env["MOUNTAINID_FILTER_THRESHOLD"] == "0.4"  # the site and the filter agree on "a mountain"


def test_settings_use_the_names_mountainid_config_reads(fresh_run: subprocess.CompletedProcess,
                                                        again_run: subprocess.CompletedProcess) -> None:
    known = set(ENV_NAMES.values())
    deployed: set[str] = set()
    for cmd in commands(fresh_run) + commands(again_run):
        if "--set-env-vars" in cmd.flags:
            deployed |= env_vars(cmd).keys()
        if "--set-secrets" in cmd.flags:
            deployed |= secret_refs(cmd).keys()
    assert deployed - known == set()
    mentioned = set(re.findall(r"\b(?:MOUNTAINID|FLICKR)_[A-Z0-9_]+\b", (REPO / "infra" / "gcp.sh").read_text()
                               + (REPO / "infra" / "lib.sh").read_text()))
    assert mentioned - known == set(), "infra names a variable mountainid.config does not read"


def test_no_secret_value_on_a_command_line(fresh_run: subprocess.CompletedProcess,
                                           again_run: subprocess.CompletedProcess) -> None:
    for cmd in commands(fresh_run) + commands(again_run):
        if cmd.path == ("secrets", "versions", "add"):
            assert cmd.flags == {"--data-file": "-", "--project": PROJECT}, cmd.line
        if "--set-env-vars" in cmd.flags:
            assert not {"FLICKR_API_KEY", "FLICKR_API_SECRET", "MOUNTAINID_ADMIN_TOKEN"} & env_vars(cmd).keys()


def test_shellcheck_passes_on_every_script() -> None:
    shellcheck = shutil.which("shellcheck")
    assert shellcheck, "shellcheck is not installed: run `make system-deps` (Debian package shellcheck)"
    scripts = sorted(str(path) for path in (REPO / "infra").rglob("*.sh"))
    assert len(scripts) >= 3
    result = subprocess.run([shellcheck, "--external-sources", "--severity=style", *scripts], cwd=REPO,
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout


def test_real_mode_stages_sources_and_passes_secrets_on_stdin(tmp_path: Path) -> None:
    """Without a cloud here, a stand-in `gcloud` on PATH records what the script really runs: the
    secret arrives on stdin (never in argv), and the staged source exists during the deploy and is
    removed after it."""
    log = tmp_path / "calls.log"
    stub = tmp_path / "bin" / "gcloud"
    stub.parent.mkdir()
    stub.write_text(f"""#!/usr/bin/env bash
printf 'argv:%s\\n' "$*" >> {log}
case "$*" in
  *"versions add"*) printf 'stdin:%s\\n' "$(cat)" >> {log} ;;
  *"functions deploy"*) for a in "$@"; do [[ $a == --source=* ]] && ls "${{a#--source=}}" >> {log}; done ;;
esac
exit 0
""")
    stub.chmod(0o755)
    env = {"PATH": f"{stub.parent}:{os.environ['PATH']}", "HOME": str(tmp_path), "TMPDIR": str(tmp_path), **BASE_ENV}
    secret = subprocess.run(["bash", str(GCP_SCRIPT), "set-secret", "flickr-api-key"], input="s3cr3t-value",
                            env=env, capture_output=True, text=True, check=False)
    assert secret.returncode == 0, secret.stderr
    deploy = subprocess.run(["bash", str(GCP_SCRIPT), "deploy-ingest"], env=env, capture_output=True, text=True,
                            check=False)
    assert deploy.returncode == 0, deploy.stderr
    calls = log.read_text()
    assert "stdin:s3cr3t-value\n" in calls
    assert not [line for line in calls.splitlines() if line.startswith("argv:") and "s3cr3t" in line]
    assert "s3cr3t" not in secret.stderr + deploy.stderr
    assert {"main.py", "mountainid", "requirements.txt"} <= set(calls.splitlines())  # listed during deploy
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("tmp")], "staged source left behind"


def test_scheduled_messages_are_what_their_handlers_accept(fresh_run: subprocess.CompletedProcess) -> None:
    """The scheduler's ingest tick must pass the ingest's own validation (a rejected tick is dropped,
    and nothing would ever be ingested), and its catch-up request must be recognised by the filter."""
    from mountainid.events.cloudevents import pubsub_event
    from mountainid.filter import is_catch_up_request
    from mountainid.ingest import tick_options

    schedules = {cmd.positionals[0]: cmd for cmd in commands(fresh_run)
                 if cmd.path == ("scheduler", "jobs", "create", "pubsub")}
    tick = schedules["mountainid-ingest-tick"]
    assert tick.flag("--topic") == f"projects/{PROJECT}/topics/ingest-tick"
    assert tick_options(json.loads(tick.flag("--message-body"))) == {}  # the whole catalog, default budget
    resweep = schedules["mountainid-ingest-resweep"]  # issue 23, finding 7: the periodic re-sweep step
    assert resweep.flag("--topic") == f"projects/{PROJECT}/topics/ingest-tick"
    assert tick_options(json.loads(resweep.flag("--message-body"))) == {"resweep": True}
    assert resweep.flag("--schedule") == "45 */6 * * *"
    catch_up = schedules["mountainid-filter-catch-up"]
    assert catch_up.flag("--topic") == f"projects/{PROJECT}/topics/raw-photos"
    attributes = dict(pair.split("=", 1) for pair in catch_up.flag("--attributes").split(","))
    message = pubsub_event(PROJECT, "raw-photos", catch_up.flag("--message-body").encode(), attributes)
    assert is_catch_up_request(message)
