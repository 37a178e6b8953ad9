# shellcheck shell=bash disable=SC2034  # (settings here are read by the scripts that source this file)
# Shared by the infra/ scripts: settings, and a gcloud wrapper that makes every run repeatable.
#
# Three kinds of calls, so a re-run is always safe and a dry run shows everything:
#   exists CMD...        a describe; true when the resource is there (dry run: printed, "absent")
#   query ANSWER CMD...  a read whose output the script needs (dry run: printed, answers ANSWER)
#   run CMD...           a change (dry run: printed, not run)
# Every create is behind an `exists`; IAM grants look the binding up in the resource's policy first.
# In a dry run each command goes to stdout as one shell-quoted line; notes go to stderr.

# --- settings (environment, with defaults) ----------------------------------------------------
PROJECT=${PROJECT:-${GOOGLE_CLOUD_PROJECT:-}}
REGION=${REGION:-us-central1}
AR_REPO=${AR_REPO:-mountainid}
TAG=${TAG:-latest}
DRY_RUN=${DRY_RUN:-0}
# Dry run only: answer every `exists` with "present", to show the update paths instead of the creates.
DRY_RUN_EXISTS=${DRY_RUN_EXISTS:-0}
INGEST_SCHEDULE=${INGEST_SCHEDULE:-0 * * * *}
TRAIN_SCHEDULE=${TRAIN_SCHEDULE:-30 3 * * *}
CATCH_UP_SCHEDULE=${CATCH_UP_SCHEDULE:-30 * * * *}
RESWEEP_SCHEDULE=${RESWEEP_SCHEDULE:-45 */6 * * *}
# Optional gs:// copy of ../shared the build's tests read (cloudbuild.yaml's _SHARED_URI): the deployer may read it.
SHARED_URI=${SHARED_URI:-}
SCHEDULE_TIME_ZONE=${SCHEDULE_TIME_ZONE:-Etc/UTC}
TRAINING_GPU=${TRAINING_GPU:-0}
BACKFILL_TASKS=${BACKFILL_TASKS:-10}
ALLOW_NO_MODEL=${ALLOW_NO_MODEL:-0}
VERIFY_ATTEMPTS=${VERIFY_ATTEMPTS:-20}
# Topic names: the same variables (and defaults) mountainid.config reads.
TOPIC_INGEST_TICK=${MOUNTAINID_TOPIC_INGEST_TICK:-ingest-tick}
TOPIC_RAW_PHOTOS=${MOUNTAINID_TOPIC_RAW_PHOTOS:-raw-photos}
TOPIC_MODEL_PUBLISHED=${MOUNTAINID_TOPIC_MODEL_PUBLISHED:-model-published}

# --- fixed names ---------------------------------------------------------------------------------
FN_INGEST=mountainid-ingest
FN_FILTER=mountainid-filter
TRAINING_JOB=mountainid-training
BACKFILL_JOB=mountainid-backfill
WEB_SERVICE=mountainid-web
SUB_MODEL_LOG=model-published-log
SCHED_INGEST=mountainid-ingest-tick
SCHED_TRAIN=mountainid-train
SCHED_CATCH_UP=mountainid-filter-catch-up
SCHED_RESWEEP=mountainid-ingest-resweep
SECRET_FLICKR_KEY=flickr-api-key
SECRET_FLICKR_SECRET=flickr-api-secret
SECRET_ADMIN_TOKEN=mountainid-admin-token
# One service account per deployable, plus the identities that invoke, build and deploy them.
SA_IDS=(ingest filter training web trigger scheduler builder deployer)
APIS=(
  artifactregistry.googleapis.com cloudbuild.googleapis.com cloudfunctions.googleapis.com
  cloudresourcemanager.googleapis.com cloudscheduler.googleapis.com eventarc.googleapis.com
  iam.googleapis.com logging.googleapis.com pubsub.googleapis.com run.googleapis.com
  secretmanager.googleapis.com storage.googleapis.com
)

INFRA_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# Dry-run lines go to the caller's stdout even from inside $(...): fd 3 is opened on it.
exec 3>&1

note() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }
dry_run() { [[ $DRY_RUN == 1 ]]; }
truthy() { [[ ${1,,} =~ ^(1|true|yes|on)$ ]]; }

# The command as one line a shell (or Python's shlex) reads back into the same words.
show() {
  local out=() word
  for word in "$@"; do
    if [[ $word =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then out+=("$word"); else out+=("${word@Q}"); fi
  done
  printf '%s\n' "${out[*]}"
}

run() {
  if dry_run; then show "$@" >&3; return 0; fi
  printf '+ %s\n' "$(show "$@")" >&2
  "$@"
}

# IAM changes right after creating a service account can fail until it has propagated.
run_retry() {
  if dry_run; then show "$@" >&3; return 0; fi
  local attempt
  for attempt in 1 2 3 4 5; do
    printf '+ %s\n' "$(show "$@")" >&2
    if "$@" >/dev/null; then return 0; fi
    note "attempt $attempt failed; retrying in $((attempt * 5)) s"
    sleep $((attempt * 5))
  done
  die "gave up: $(show "$@")"
}

exists() {
  if dry_run; then show "$@" >&3; [[ $DRY_RUN_EXISTS == 1 ]]; return; fi
  "$@" >/dev/null 2>&1
}

query() {
  local answer=$1; shift
  if dry_run; then show "$@" >&3; printf '%s\n' "$answer"; return 0; fi
  "$@"
}

# dry_answer TEXT: what a query answers in a dry run: TEXT where resources "exist", else nothing.
dry_answer() { if [[ $DRY_RUN_EXISTS == 1 ]]; then printf '%s' "$1"; fi; }

require_settings() {
  [[ -n $PROJECT ]] || die "PROJECT is not set: export PROJECT=<your Google Cloud project id>"
  [[ $PROJECT =~ ^[a-z][a-z0-9-]{4,28}[a-z0-9]$ ]] || die "PROJECT '$PROJECT' is not a valid project id"
  BUCKET=${BUCKET:-$PROJECT-mountainid}
  BUCKET=${BUCKET#gs://}
  [[ $BUCKET =~ ^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$ ]] || die "BUCKET '$BUCKET' is not a valid bucket name"
  [[ -z $SHARED_URI || $SHARED_URI =~ ^gs://[a-z0-9][a-z0-9._-]{1,61}[a-z0-9](/.*)?$ ]] ||
    die "SHARED_URI '$SHARED_URI' is not a gs:// URI"
  # Where `gcloud builds submit` stages the source (its default: PROJECT_cloudbuild, "google" spelt backwards).
  STAGING_BUCKET="${PROJECT//google/elgoog}_cloudbuild"
  AR_HOST="$REGION-docker.pkg.dev"
  IMAGE_WEB="$AR_HOST/$PROJECT/$AR_REPO/web:$TAG"
  IMAGE_TRAINING="$AR_HOST/$PROJECT/$AR_REPO/training:$TAG"
  export CLOUDSDK_CORE_DISABLE_PROMPTS=1
}

sa_email() { printf 'mountainid-%s@%s.iam.gserviceaccount.com' "$1" "$PROJECT"; }
sa_member() { printf 'serviceAccount:%s' "$(sa_email "$1")"; }

# --set-env-vars value: what every deployable needs, the fixed NAME=VALUE pairs given, and each
# optional NAME given that is set in this environment (unset ones keep mountainid.config's default).
# The ^@^ prefix makes '@' the separator, so values may contain commas (MOUNTAINID_LICENSES=4,5,9).
env_vars_flag() {
  local pairs=("MOUNTAINID_BUCKET=gs://$BUCKET" "GOOGLE_CLOUD_PROJECT=$PROJECT" "MOUNTAINID_LOG_FORMAT=json")
  local item
  for item in "$@"; do
    if [[ $item == *=* ]]; then
      pairs+=("$item")
    elif [[ -n ${!item:-} ]]; then
      pairs+=("$item=${!item}")
    fi
  done
  for item in "${pairs[@]}"; do [[ $item != *@* ]] || die "environment value may not contain '@': $item"; done
  local IFS=@
  printf -- '--set-env-vars=^@^%s' "${pairs[*]}"
}

# --- IAM: grant only what the resource's policy does not have yet ---------------------------------
declare -A POLICIES=()

# grant GROUP RESOURCE MEMBER ROLE [CONDITION_EXPRESSION CONDITION_TITLE]
#   GROUP: the gcloud command group ("storage buckets", "pubsub topics", "run jobs", ...);
#   RESOURCE: its positional argument plus any location flag, e.g. "mountainid-training --region=R".
grant() {
  local -a group where
  read -r -a group <<<"$1"
  read -r -a where <<<"$2"
  local member=$3 role=$4 expression=${5:-} title=${6:-} key="$1 $2"
  if [[ -z ${POLICIES[$key]+set} ]]; then
    POLICIES[$key]=$(query '{}' gcloud "${group[@]}" get-iam-policy "${where[@]}" --project="$PROJECT" --format=json)
  fi
  if has_binding "${POLICIES[$key]}" "$role" "$member" "$expression"; then
    note "already granted: $role to $member on ${group[*]} ${where[0]}${title:+ ($title)}"
    return 0
  fi
  local condition=()
  if [[ -n $expression ]]; then
    condition=("--condition=^;^expression=$expression;title=$title")
  elif [[ $1 == projects ]]; then
    condition=(--condition=None)  # project policies may hold conditional bindings of others
  fi
  run_retry gcloud "${group[@]}" add-iam-policy-binding "${where[@]}" --project="$PROJECT" \
    --member="$member" --role="$role" "${condition[@]}"
}

# has_binding POLICY_JSON ROLE MEMBER EXPRESSION: is that exact (conditional) binding in the policy?
has_binding() {
  [[ $1 != "{}" ]] || return 1  # an empty policy (and every dry run) has no bindings
  python3 - "$@" <<'PY'
import json, sys
policy, role, member, expression = sys.argv[1:5]
bindings = json.loads(policy or "{}").get("bindings", [])
found = any(b.get("role") == role and member in b.get("members", [])
            and (b.get("condition") or {}).get("expression", "") == expression for b in bindings)
sys.exit(0 if found else 1)
PY
}
