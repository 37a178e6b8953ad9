#!/usr/bin/env bash
# MountainID on Google Cloud: create what the pipeline needs, deploy it, check it.
# Idempotent: every step looks before it creates, so running it again is safe.
set -euo pipefail

# shellcheck source=infra/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
  cat <<'EOF'
Usage: infra/gcp.sh [--dry-run] COMMAND...

Set up a project (once, as a project owner; `bootstrap` runs them all in this order):
  apis        enable the Google Cloud APIs the pipeline uses
  registry    Artifact Registry docker repository for the images
  pubsub      topics (ingest-tick, raw-photos, model-published) and the model-published log subscription
  bucket      the bucket (uniform access, no public access, lifecycle) and its raw/ -> raw-photos notification,
              and Cloud Build's staging bucket PROJECT_cloudbuild (so the deployer can be allowed to read it)
  accounts    one service account per deployable, plus trigger, scheduler, builder and deployer
  secrets     Secret Manager secrets for the Flickr key and secret, and a generated admin token
  iam         least-privilege grants (bucket prefixes via IAM conditions, topics, secrets, deploy roles)
  scheduler   Cloud Scheduler: hourly ingest tick, a re-sweep step every 6 hours, hourly filter catch-up,
              nightly training run
  set-secret NAME   store a secret value read from stdin (flickr-api-key, flickr-api-secret, ...)

Deploy (what cloudbuild.yaml runs; `deploy` runs them all, then verify):
  deploy-ingest deploy-filter deploy-training deploy-backfill deploy-web verify

Settings (environment): PROJECT (required), REGION [us-central1], BUCKET [PROJECT-mountainid],
AR_REPO [mountainid], TAG [latest], TRAINING_GPU [0], BACKFILL_TASKS [10], ALLOW_NO_MODEL [0], INGEST_SCHEDULE,
RESWEEP_SCHEDULE, CATCH_UP_SCHEDULE, TRAIN_SCHEDULE, SCHEDULE_TIME_ZONE, SHARED_URI (gs:// copy of ../shared the
build's tests read), and any MOUNTAINID_* tuning variable (passed to the deployables).
--dry-run (or DRY_RUN=1) prints each gcloud command instead of running it.
EOF
}

# --- setup -----------------------------------------------------------------------------------------

enable_apis() {
  local enabled missing=() api
  enabled=$(query "$(dry_answer "$(printf '%s\n' "${APIS[@]}")")" gcloud services list --enabled --project="$PROJECT" --format='value(config.name)')
  for api in "${APIS[@]}"; do
    grep -qx "$api" <<<"$enabled" || missing+=("$api")
  done
  if ((${#missing[@]})); then
    run gcloud services enable "${missing[@]}" --project="$PROJECT"
  else
    note "APIs already enabled"
  fi
}

create_registry() {
  if exists gcloud artifacts repositories describe "$AR_REPO" --location="$REGION" --project="$PROJECT"; then
    note "Artifact Registry repository $AR_REPO exists"
  else
    run gcloud artifacts repositories create "$AR_REPO" --repository-format=docker --location="$REGION" \
      --description="MountainID images (web, training)" --project="$PROJECT"
  fi
}

create_pubsub() {
  local topic
  for topic in "$TOPIC_INGEST_TICK" "$TOPIC_RAW_PHOTOS" "$TOPIC_MODEL_PUBLISHED"; do
    if exists gcloud pubsub topics describe "$topic" --project="$PROJECT"; then
      note "topic $topic exists"
    else
      run gcloud pubsub topics create "$topic" --project="$PROJECT"
    fi
  done
  # The functions' subscriptions belong to their Eventarc triggers (created by the deploys).
  # model-published is for the web service (it polls models/LATEST) and operators; this pull
  # subscription keeps a week of promotions so `gcloud pubsub subscriptions pull` shows them.
  if exists gcloud pubsub subscriptions describe "$SUB_MODEL_LOG" --project="$PROJECT"; then
    note "subscription $SUB_MODEL_LOG exists"
  else
    run gcloud pubsub subscriptions create "$SUB_MODEL_LOG" --topic="$TOPIC_MODEL_PUBLISHED" \
      --message-retention-duration=7d --expiration-period=never --project="$PROJECT"
  fi
}

create_bucket() {
  if exists gcloud storage buckets describe "gs://$BUCKET" --project="$PROJECT"; then
    note "bucket gs://$BUCKET exists"
  else
    run gcloud storage buckets create "gs://$BUCKET" --location="$REGION" --default-storage-class=STANDARD \
      --uniform-bucket-level-access --public-access-prevention --project="$PROJECT"
  fi
  # Declarative: applying the same settings again changes nothing.
  run gcloud storage buckets update "gs://$BUCKET" --lifecycle-file="$INFRA_DIR/bucket-lifecycle.json" \
    --no-versioning --uniform-bucket-level-access --public-access-prevention --project="$PROJECT"

  # New objects under raw/ only are announced on raw-photos, which triggers the filter; its own
  # outputs (accepted/, rejected/, embeddings/) never reach it. Same chain as the local cloud.
  local agent
  agent=$(query "service-0@gs-project-accounts.iam.gserviceaccount.com" \
    gcloud storage service-agent --project="$PROJECT")
  grant "pubsub topics" "$TOPIC_RAW_PHOTOS" "serviceAccount:$agent" roles/pubsub.publisher
  local topics
  topics=$(query "$(dry_answer "//pubsub.googleapis.com/projects/$PROJECT/topics/$TOPIC_RAW_PHOTOS")" \
    gcloud storage buckets notifications list "gs://$BUCKET" --project="$PROJECT" \
    --format='value(topic)')
  if grep -q "/topics/$TOPIC_RAW_PHOTOS\$" <<<"$topics"; then
    note "notification gs://$BUCKET -> $TOPIC_RAW_PHOTOS exists"
  else
    run gcloud storage buckets notifications create "gs://$BUCKET" --topic="$TOPIC_RAW_PHOTOS" \
      --event-types=OBJECT_FINALIZE --object-prefix=raw/ --payload-format=json --skip-topic-setup \
      --project="$PROJECT"
  fi

  # `gcloud builds submit` uploads the source here and creates the bucket (in US) on first use; made now,
  # the deployer can be granted read access before the first build fetches its source from it.
  if exists gcloud storage buckets describe "gs://$STAGING_BUCKET" --project="$PROJECT"; then
    note "Cloud Build staging bucket gs://$STAGING_BUCKET exists"
  else
    run gcloud storage buckets create "gs://$STAGING_BUCKET" --location=US --uniform-bucket-level-access \
      --public-access-prevention --project="$PROJECT"
  fi
}

create_accounts() {
  local id
  for id in "${SA_IDS[@]}"; do
    if exists gcloud iam service-accounts describe "$(sa_email "$id")" --project="$PROJECT"; then
      note "service account mountainid-$id exists"
    else
      run gcloud iam service-accounts create "mountainid-$id" --display-name="MountainID $id" \
        --description="Identity of the MountainID $id (created by infra/gcp.sh)" --project="$PROJECT"
    fi
  done
}

create_secrets() {
  local secret
  for secret in "$SECRET_FLICKR_KEY" "$SECRET_FLICKR_SECRET" "$SECRET_ADMIN_TOKEN"; do
    if exists gcloud secrets describe "$secret" --project="$PROJECT"; then
      note "secret $secret exists"
    else
      run gcloud secrets create "$secret" --replication-policy=automatic --project="$PROJECT"
    fi
  done
  # The admin token guards the web service's admin actions; nobody needs to type it, so generate it.
  if [[ -z $(secret_version "$SECRET_ADMIN_TOKEN") ]]; then
    local token
    token=$(head -c 32 /dev/urandom | base64 | tr -d '=+/\n')
    run gcloud secrets versions add "$SECRET_ADMIN_TOKEN" --data-file=- --project="$PROJECT" < <(printf '%s' "$token")
  fi
  for secret in "$SECRET_FLICKR_KEY" "$SECRET_FLICKR_SECRET"; do
    [[ -n $(secret_version "$secret") ]] ||
      note "secret $secret has no value yet: infra/gcp.sh set-secret $secret   (then paste it, Ctrl-D)"
  done
}

secret_version() {
  query "$(dry_answer "projects/$PROJECT/secrets/$1/versions/1")" gcloud secrets versions list "$1" --filter=state:enabled --limit=1 --format='value(name)' \
    --project="$PROJECT"
}

# The value comes from stdin (never a file or an argument); typed at a terminal it is not echoed.
set_secret() {
  local name=${1:-}
  case $name in
    "$SECRET_FLICKR_KEY" | "$SECRET_FLICKR_SECRET" | "$SECRET_ADMIN_TOKEN") ;;
    *) die "set-secret needs one of: $SECRET_FLICKR_KEY $SECRET_FLICKR_SECRET $SECRET_ADMIN_TOKEN" ;;
  esac
  if [[ -t 0 ]]; then
    local value
    read -rsp "Value for $name (not echoed): " value
    echo >&2
    [[ -n $value ]] || die "empty value; nothing stored"
    run gcloud secrets versions add "$name" --data-file=- --project="$PROJECT" < <(printf '%s' "$value")
  else
    run gcloud secrets versions add "$name" --data-file=- --project="$PROJECT"
  fi
}

# objects_condition BUCKET MODE PREFIX...: the objects under PREFIX... in BUCKET; with MODE "list",
# also listing with a prefix inside them. A list request is made on the bucket, not on objects, so
# resource.name cannot scope it; the objectListPrefix attribute can (a list without a prefix, or
# outside these prefixes, is denied).
objects_condition() {
  local bucket=$1 mode=$2 prefix parts=()
  shift 2
  for prefix in "$@"; do
    parts+=("resource.name.startsWith(\"projects/_/buckets/$bucket/objects/$prefix\")")
    if [[ $mode == list ]]; then
      parts+=("api.getAttribute(\"storage.googleapis.com/objectListPrefix\", \"\").startsWith(\"$prefix\")")
    fi
  done
  local joined
  joined=$(printf ' || %s' "${parts[@]}")
  printf '%s' "${joined:4}"
}

# bucket_role ID ROLE TITLE PREFIX...: grant ROLE on the pipeline's bucket to one service account, limited to PREFIXes.
bucket_role() { prefixed_role "$BUCKET" "$@"; }

# prefixed_role BUCKET ID ROLE TITLE PREFIX...: the same on any bucket.
prefixed_role() {
  local bucket=$1 id=$2 role=$3 title=$4 mode=get
  shift 4
  [[ $role == roles/storage.objectCreator ]] || mode=list
  grant "storage buckets" "gs://$bucket" "$(sa_member "$id")" "$role" "$(objects_condition "$bucket" "$mode" "$@")" "$title"
}

grant_access() {
  # Writers get objectUser, not objectCreator: replacing an object (the ingest cursor, models/LATEST,
  # an idempotent re-run of the filter) needs storage.objects.delete, which objectCreator lacks.
  bucket_role ingest roles/storage.objectUser ingest-writes-raw-state raw/ state/ingest/
  bucket_role filter roles/storage.objectViewer filter-reads-raw raw/
  bucket_role filter roles/storage.objectUser filter-writes-results accepted/ rejected/ embeddings/ localfeatures/
  bucket_role training roles/storage.objectViewer training-reads-accepted accepted/
  bucket_role training roles/storage.objectUser training-writes-models embeddings/ localfeatures/ models/ state/training/
  bucket_role web roles/storage.objectViewer web-reads-models-gallery models/ accepted/ localfeatures/
  if truthy "${MOUNTAINID_STORE_UPLOADS:-false}"; then
    bucket_role web roles/storage.objectCreator web-writes-uploads uploads/
  fi
  grant "pubsub topics" "$TOPIC_MODEL_PUBLISHED" "$(sa_member training)" roles/pubsub.publisher
  grant secrets "$SECRET_FLICKR_KEY" "$(sa_member ingest)" roles/secretmanager.secretAccessor
  grant secrets "$SECRET_FLICKR_SECRET" "$(sa_member ingest)" roles/secretmanager.secretAccessor
  grant secrets "$SECRET_ADMIN_TOKEN" "$(sa_member web)" roles/secretmanager.secretAccessor

  # Eventarc's Pub/Sub push subscriptions sign their requests as the trigger account; projects made
  # before April 2021 need the Pub/Sub service agent allowed to mint those tokens.
  local number
  number=$(query 000000000000 gcloud projects describe "$PROJECT" --format='value(projectNumber)')
  grant "iam service-accounts" "$(sa_email trigger)" \
    "serviceAccount:service-$number@gcp-sa-pubsub.iam.gserviceaccount.com" roles/iam.serviceAccountTokenCreator

  # Builder: builds the functions' containers. Deployer: the identity cloudbuild.yaml runs as.
  grant projects "$PROJECT" "$(sa_member builder)" roles/cloudbuild.builds.builder
  local role id
  for role in roles/cloudfunctions.developer roles/run.admin roles/logging.logWriter; do
    grant projects "$PROJECT" "$(sa_member deployer)" "$role"
  done
  grant "artifacts repositories" "$AR_REPO --location=$REGION" "$(sa_member deployer)" roles/artifactregistry.writer
  # A build fetches its source from the staging bucket as the account it runs as ("does not have
  # storage.objects.list access ... Fetching storage object" otherwise). The bucket holds build sources only.
  grant "storage buckets" "gs://$STAGING_BUCKET" "$(sa_member deployer)" roles/storage.objectViewer
  # cloudbuild.yaml's shared-data step copies _SHARED_URI for the tests: read access to that folder only.
  if [[ -n $SHARED_URI ]]; then
    local shared=${SHARED_URI#gs://} folder
    folder=${shared#*/}
    if [[ $shared == */* && -n ${folder%/} ]]; then
      prefixed_role "${shared%%/*}" deployer roles/storage.objectViewer deployer-reads-shared-data "${folder%/}/"
    else
      grant "storage buckets" "gs://${shared%/}" "$(sa_member deployer)" roles/storage.objectViewer
    fi
  fi
  for id in ingest filter training web trigger builder; do
    grant "iam service-accounts" "$(sa_email "$id")" "$(sa_member deployer)" roles/iam.serviceAccountUser
  done
}

create_schedules() {
  # Full topic names: gcloud resolves --topic while parsing, before it has read --project, so a bare
  # name fails where no default project is configured (CI, a fresh machine).
  local verb=create
  exists gcloud scheduler jobs describe "$SCHED_INGEST" --location="$REGION" --project="$PROJECT" && verb=update
  run gcloud scheduler jobs "$verb" pubsub "$SCHED_INGEST" --location="$REGION" --schedule="$INGEST_SCHEDULE" \
    --time-zone="$SCHEDULE_TIME_ZONE" --topic="projects/$PROJECT/topics/$TOPIC_INGEST_TICK" --message-body='{}' \
    --description="MountainID: poll Flickr for new photos" --project="$PROJECT"

  # A re-sweep step: photos before the ingest cursor that became eligible later (mountainid/ingest.py).
  verb=create
  exists gcloud scheduler jobs describe "$SCHED_RESWEEP" --location="$REGION" --project="$PROJECT" && verb=update
  run gcloud scheduler jobs "$verb" pubsub "$SCHED_RESWEEP" --location="$REGION" --schedule="$RESWEEP_SCHEDULE" \
    --time-zone="$SCHEDULE_TIME_ZONE" --topic="projects/$PROJECT/topics/$TOPIC_INGEST_TICK" \
    --message-body='{"resweep": true}' \
    --description="MountainID: re-sweep for photos relicensed or indexed after the cursor passed" --project="$PROJECT"

  # The filter judges raw/ photos whose notification was lost (mountainid.filter.is_catch_up_request).
  # `create` takes --attributes; `update` has only --update-attributes (and --remove/--clear-attributes).
  local attributes=--attributes
  verb=create
  if exists gcloud scheduler jobs describe "$SCHED_CATCH_UP" --location="$REGION" --project="$PROJECT"; then
    verb=update attributes=--update-attributes
  fi
  run gcloud scheduler jobs "$verb" pubsub "$SCHED_CATCH_UP" --location="$REGION" --schedule="$CATCH_UP_SCHEDULE" \
    --time-zone="$SCHEDULE_TIME_ZONE" --topic="projects/$PROJECT/topics/$TOPIC_RAW_PHOTOS" --message-body='{}' \
    "$attributes=mountainid=catch-up" \
    --description="MountainID: judge raw/ photos whose notification was lost" --project="$PROJECT"

  # Cloud Run Admin API v2 jobs.run, called with an OAuth token of the scheduler account.
  verb=create
  exists gcloud scheduler jobs describe "$SCHED_TRAIN" --location="$REGION" --project="$PROJECT" && verb=update
  run gcloud scheduler jobs "$verb" http "$SCHED_TRAIN" --location="$REGION" --schedule="$TRAIN_SCHEDULE" \
    --time-zone="$SCHEDULE_TIME_ZONE" --http-method=POST \
    --uri="https://run.googleapis.com/v2/projects/$PROJECT/locations/$REGION/jobs/$TRAINING_JOB:run" \
    --oauth-service-account-email="$(sa_email scheduler)" \
    --oauth-token-scope=https://www.googleapis.com/auth/cloud-platform \
    --description="MountainID: retrain, promote only a better model" --project="$PROJECT"
}

bootstrap() {
  enable_apis
  create_registry
  create_pubsub
  create_bucket
  create_accounts
  create_secrets
  grant_access
  create_schedules
}

# --- deploy ----------------------------------------------------------------------------------------

WORK_DIR=""
SOURCE=""
cleanup() { if [[ -n $WORK_DIR ]]; then rm -rf "$WORK_DIR"; fi; }
trap cleanup EXIT

# stage NAME: a self-contained source folder for one function (main.py, requirements.txt, the
# library) in SOURCE. Not in $(...): WORK_DIR must be set in this shell for the cleanup trap.
stage() {
  if dry_run; then
    SOURCE="\$TMPDIR/$1"
    show "$INFRA_DIR/stage-function.sh" "$1" "$SOURCE" >&3
    return 0
  fi
  [[ -n $WORK_DIR ]] || WORK_DIR=$(mktemp -d)
  SOURCE="$WORK_DIR/$1"
  "$INFRA_DIR/stage-function.sh" "$1" "$SOURCE" >/dev/null
}

# Functions are not publicly invokable: only the trigger account may call them.
allow_trigger() {
  grant "run services" "$1 --region=$REGION" "$(sa_member trigger)" roles/run.invoker
}

deploy_ingest() {
  stage ingest
  run gcloud functions deploy "$FN_INGEST" --gen2 --region="$REGION" --project="$PROJECT" \
    --runtime=python311 --source="$SOURCE" --entry-point=ingest \
    --trigger-topic="$TOPIC_INGEST_TICK" --trigger-service-account="$(sa_email trigger)" \
    --service-account="$(sa_email ingest)" \
    --build-service-account="projects/$PROJECT/serviceAccounts/$(sa_email builder)" \
    --no-allow-unauthenticated --ingress-settings=internal-only \
    --memory=1Gi --cpu=1 --timeout=540s --max-instances=1 --concurrency=1 \
    "$(env_vars_flag MOUNTAINID_CATALOG MOUNTAINID_PHOTOS_PER_RUN MOUNTAINID_LICENSES \
      MOUNTAINID_DOWNLOAD_WORKERS MOUNTAINID_FLICKR_RETRIES MOUNTAINID_FLICKR_TIMEOUT_S \
      MOUNTAINID_INGEST_MAX_ATTEMPTS MOUNTAINID_INGEST_SEARCH_PAGES MOUNTAINID_RESWEEP_PAGES MOUNTAINID_MAX_IMAGE_BYTES \
      MOUNTAINID_LOG_LEVEL)" \
    --set-secrets="FLICKR_API_KEY=$SECRET_FLICKR_KEY:latest,FLICKR_API_SECRET=$SECRET_FLICKR_SECRET:latest"
  allow_trigger "$FN_INGEST"
}

deploy_filter() {
  stage filter
  # --retry: a crash (not a bad photo: those are rejected and acknowledged) is redelivered, and
  # the filter is idempotent, so redelivery finishes the work without doubling it.
  run gcloud functions deploy "$FN_FILTER" --gen2 --region="$REGION" --project="$PROJECT" \
    --runtime=python311 --source="$SOURCE" --entry-point=filter_photo \
    --trigger-topic="$TOPIC_RAW_PHOTOS" --trigger-service-account="$(sa_email trigger)" --retry \
    --service-account="$(sa_email filter)" \
    --build-service-account="projects/$PROJECT/serviceAccounts/$(sa_email builder)" \
    --no-allow-unauthenticated --ingress-settings=internal-only \
    --memory=2Gi --cpu=1 --timeout=120s --max-instances=10 --concurrency=1 \
    "$(env_vars_flag MOUNTAINID_WEIGHTS=imagenet MOUNTAINID_FILTER_THRESHOLD MOUNTAINID_MAX_IMAGE_PIXELS \
      MOUNTAINID_MAX_IMAGE_BYTES MOUNTAINID_CATCH_UP_LIMIT MOUNTAINID_LOG_LEVEL)"
  allow_trigger "$FN_FILTER"
}

deploy_training() {
  local track=() size=(--cpu=4 --memory=8Gi) tier=finetune
  if truthy "$TRAINING_GPU"; then
    # GPU jobs are in the beta track; the image must be built with VARIANT=gpu (cloudbuild.yaml does).
    # The gpu tier: the fine-tune at the length a GPU affords (mountainid/training/job.py).
    track=(beta)
    size=(--cpu=4 --memory=16Gi --gpu=1 --gpu-type=nvidia-l4)
    tier=gpu
  fi
  run gcloud "${track[@]}" run jobs deploy "$TRAINING_JOB" --image="$IMAGE_TRAINING" \
    --region="$REGION" --project="$PROJECT" --service-account="$(sa_email training)" \
    --tasks=1 --parallelism=1 --max-retries=1 --task-timeout=3600s "${size[@]}" --args=--tier,"$tier" \
    "$(env_vars_flag MOUNTAINID_WEIGHTS=imagenet MOUNTAINID_EVENTS=pubsub \
      "MOUNTAINID_TOPIC_MODEL_PUBLISHED=$TOPIC_MODEL_PUBLISHED" MOUNTAINID_CATALOG \
      MOUNTAINID_MIN_PHOTOS_PER_CLASS MOUNTAINID_RETRAIN_MIN_NEW_PHOTOS MOUNTAINID_MAX_IMAGE_PIXELS \
      MOUNTAINID_PROMOTION_MIN_TEST MOUNTAINID_SHARD_MB MOUNTAINID_LOG_LEVEL)"
  grant "run jobs" "$TRAINING_JOB --region=$REGION" "$(sa_member scheduler)" roles/run.invoker
}

# On demand, not scheduled (infra/README.md): fills the caches of accepted/ that are missing or corrupt
# (after a new backbone or keypoint extractor) with the training image and the training account. Each of
# the BACKFILL_TASKS tasks takes its own hash shard (Cloud Run sets CLOUD_RUN_TASK_INDEX/COUNT); a retried
# task redoes only what is still missing.
deploy_backfill() {
  run gcloud run jobs deploy "$BACKFILL_JOB" --image="$IMAGE_TRAINING" \
    --region="$REGION" --project="$PROJECT" --service-account="$(sa_email training)" \
    --tasks="$BACKFILL_TASKS" --max-retries=3 --task-timeout=3600s --cpu=2 --memory=4Gi \
    --command=mountainid --args=backfill \
    "$(env_vars_flag MOUNTAINID_WEIGHTS=imagenet MOUNTAINID_MAX_IMAGE_PIXELS MOUNTAINID_MAX_IMAGE_BYTES \
      MOUNTAINID_LOG_LEVEL)"
}

deploy_web() {
  # Instance-based CPU (--no-cpu-throttling) so the model poller and background hot-swap run
  # between requests; the TCP startup probe lets it start before a first model exists.
  run gcloud run deploy "$WEB_SERVICE" --image="$IMAGE_WEB" --region="$REGION" --project="$PROJECT" \
    --service-account="$(sa_email web)" --allow-unauthenticated --port=8080 \
    --cpu=2 --memory=2Gi --concurrency=8 --min-instances=0 --max-instances=4 --timeout=120s \
    --cpu-boost --no-cpu-throttling \
    "$(env_vars_flag MOUNTAINID_WEIGHTS=imagenet MOUNTAINID_CATALOG MOUNTAINID_MODEL_POLL_S MOUNTAINID_LICENSES \
      MOUNTAINID_FILTER_THRESHOLD MOUNTAINID_STORE_UPLOADS MOUNTAINID_MAX_IMAGE_PIXELS MOUNTAINID_MAX_IMAGE_BYTES MOUNTAINID_LOG_LEVEL)" \
    --set-secrets="MOUNTAINID_ADMIN_TOKEN=$SECRET_ADMIN_TOKEN:latest"
}

# /health answers 200 once a model is loaded, 503 before. ALLOW_NO_MODEL=1 accepts a 503 (a new
# project has no model until the first training run).
verify_web() {
  local url reply code="" attempt
  url=$(query "https://$WEB_SERVICE-dry-run.a.run.app" gcloud run services describe "$WEB_SERVICE" \
    --region="$REGION" --project="$PROJECT" --format='value(status.url)')
  if dry_run; then show curl -sS --max-time 20 "$url/health" >&3; return 0; fi
  for ((attempt = 1; attempt <= VERIFY_ATTEMPTS; attempt++)); do
    reply=$(curl -sS --max-time 20 -w '\n%{http_code}' "$url/health" || true)
    code=${reply##*$'\n'}
    if [[ $code == 200 ]]; then
      note "$url/health: ready"
      return 0
    fi
    note "$url/health: HTTP $code (attempt $attempt/$VERIFY_ATTEMPTS) ${reply%$'\n'*}"
    sleep 6
  done
  if [[ $code == 503 ]] && truthy "$ALLOW_NO_MODEL"; then
    note "web is up but has no model yet (ALLOW_NO_MODEL=1): run the training job"
    return 0
  fi
  die "$url/health did not become ready"
}

main() {
  local commands=()
  while (($#)); do
    case $1 in
      -n | --dry-run) DRY_RUN=1 ;;
      -h | --help) usage; return 0 ;;
      set-secret)
        commands+=("set-secret:${2:-}")
        if (($# > 1)); then shift; fi
        ;;
      -*) usage >&2; die "unknown option $1" ;;
      *) commands+=("$1") ;;
    esac
    shift
  done
  ((${#commands[@]})) || { usage >&2; exit 2; }
  require_settings
  local command
  for command in "${commands[@]}"; do
    note "$command (project $PROJECT, region $REGION, bucket gs://$BUCKET)"
    case $command in
      apis) enable_apis ;;
      registry) create_registry ;;
      pubsub) create_pubsub ;;
      bucket) create_bucket ;;
      accounts) create_accounts ;;
      secrets) create_secrets ;;
      iam) grant_access ;;
      scheduler) create_schedules ;;
      bootstrap) bootstrap ;;
      set-secret:*) set_secret "${command#set-secret:}" ;;
      deploy-ingest) deploy_ingest ;;
      deploy-filter) deploy_filter ;;
      deploy-training) deploy_training ;;
      deploy-backfill) deploy_backfill ;;
      deploy-web) deploy_web ;;
      verify) verify_web ;;
      deploy) deploy_ingest; deploy_filter; deploy_training; deploy_backfill; deploy_web; verify_web ;;
      *) usage >&2; die "unknown command $command" ;;
    esac
  done
}

main "$@"
