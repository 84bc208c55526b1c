"""The one typed settings object.

Everything configurable lives here so that a deployment is described in one place: environment
variables (``LABELLOOP_<SECTION>__<NAME>``, e.g. ``LABELLOOP_DB__URL``), an optional YAML file
named by ``LABELLOOP_CONFIG_FILE``, and explicit keyword arguments (highest precedence).
Nothing reads settings from module globals: callers build a :class:`Settings` and pass it on,
which keeps tests and Airflow workers free of hidden shared state.

Secrets are :class:`pydantic.SecretStr`, so ``repr``/logging shows ``**********``: keys, tokens
and the database URL (it usually carries a password); :meth:`Settings.redacted` is what the CLI
prints (the DB URL with its password masked).

Typos are errors, not silently ignored settings: an unknown key in a section (YAML file or
keyword arguments) is refused by pydantic, and an unknown ``LABELLOOP_*`` environment variable
is refused by :func:`check_environment` with the closest known name. Variables that configure
tooling rather than labelloop (:data:`NON_SETTING_ENV`, the ``LABELLOOP_TEST_*``/``SKIP_*``/
``DEMO_*`` families of the test and demo scripts) are let through.
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

CONFIG_FILE_ENV = "LABELLOOP_CONFIG_FILE"
ENV_PREFIX = "LABELLOOP_"
#: LABELLOOP_* variables that are not settings: the config file, the migrations folder
#: (labelloop.db.migrate), the sample data and MinerU virtualenv of the test and set-up scripts
NON_SETTING_ENV = frozenset(
    {CONFIG_FILE_ENV, "LABELLOOP_MIGRATIONS_DIR", "LABELLOOP_SAMPLE_DATA", "LABELLOOP_MINERU_VENV"}
)
#: families of tooling variables (tests, scripts/bootstrap.sh, scripts/demo.sh)
NON_SETTING_ENV_PREFIXES = ("LABELLOOP_TEST_", "LABELLOOP_SKIP_", "LABELLOOP_DEMO_")


class _Section(BaseModel):
    """A settings section: an unknown key is an error, never a silently ignored typo."""

    model_config = ConfigDict(extra="forbid")


class DatabaseSettings(_Section):
    url: SecretStr = Field(
        SecretStr("sqlite:///.labelloop/labelloop.db"),
        description="SQLAlchemy URL of the curation database (a secret: it usually holds the password). "
        "SQLite is the embedded default; production uses PostgreSQL, e.g. "
        "postgresql+psycopg://user:pw@host:5432/labelloop.",
    )

    @property
    def url_value(self) -> str:
        """The URL itself, for the engine (never log it: :func:`redact_url`)."""
        return self.url.get_secret_value()

    @property
    def url_redacted(self) -> str:
        return redact_url(self.url.get_secret_value())

    echo: bool = Field(False, description="Log every SQL statement (debugging only).")
    pool_size: int = Field(5, ge=1, description="Connection pool size (PostgreSQL only).")


class StorageSettings(_Section):
    backend: Literal["local", "s3"] = Field(
        "local", description="Object store: a local folder (embedded default) or MinIO/S3."
    )
    root: Path = Field(Path(".labelloop/objects"), description="Folder that holds the objects when backend=local.")
    endpoint: str = Field("127.0.0.1:9000", description="MinIO/S3 endpoint as host:port (no scheme); backend=s3.")
    access_key: SecretStr = Field(SecretStr("minioadmin"), description="MinIO/S3 access key.")
    secret_key: SecretStr = Field(SecretStr("minioadmin"), description="MinIO/S3 secret key.")
    bucket: str = Field("labelloop", description="Bucket that holds every labelloop object.")
    secure: bool = Field(False, description="Use TLS (https) to reach the endpoint.")
    region: str | None = Field("us-east-1", description="Bucket region; None lets the SDK ask.")
    create_bucket: bool = Field(True, description="Create the bucket on first use if it is missing.")
    presign_expiry_s: int = Field(
        3600, ge=1, le=7 * 24 * 3600, description="Lifetime of presigned GET URLs, in seconds."
    )
    public_endpoint: str | None = Field(
        None,
        description="host:port that browsers use to reach MinIO, when it differs from `endpoint` "
        "(presigned URLs handed to annotators are signed for this host).",
    )


class IngestSettings(_Section):
    max_image_pixels: int = Field(
        100_000_000,
        ge=1,
        description="Images with more pixels (width*height) are rejected as decompression bombs.",
    )
    max_pdf_pages: int = Field(500, ge=1, description="PDFs with more pages are rejected.")
    max_page_pixels: int = Field(
        40_000_000,
        ge=1,
        description="PDFs with a page of more pixels than this at documents.render_dpi are rejected "
        "(A0 at 144 DPI is 32 MP; the largest page PDF allows, 14,400 pt square, is 829 MP there).",
    )
    verify: Literal["structure", "decode"] = Field(
        "structure",
        description="How images are checked at ingest: 'structure' finds truncation and corruption from the "
        "container (JPEG markers, PNG chunk CRCs, ...) at disk speed; 'decode' decodes every pixel.",
    )
    max_file_bytes: int = Field(
        512 * 1024 * 1024, ge=1, description="Files larger than this are rejected without reading."
    )
    max_video_seconds: float = Field(3600.0, gt=0, description="Videos longer than this (seconds) are rejected.")
    max_video_pixels: int = Field(
        3840 * 2160, ge=1, description="Videos whose frames have more pixels (after rotation) are rejected."
    )
    commit_every: int = Field(
        500,
        ge=1,
        description="Files per ingest batch: their objects are made durable together, then their rows committed "
        "in one transaction (a crash loses at most one batch, which the rerun redoes).",
    )
    batch_bytes: int = Field(
        256 * 1024 * 1024, ge=1, description="An ingest batch also ends once it has staged this many bytes."
    )
    probe_workers: int = Field(
        0,
        ge=0,
        description="Processes that probe files in parallel during ingest; 0 = one per core, 1 = in the ingest "
        "process itself.",
    )
    office: bool = Field(
        True,
        description="Ingest office and web documents (DOCX, PPTX, XLSX, ODT/ODS/ODP, EPUB, HTML) "
        "instead of rejecting them; they are rendered to PDF for review (LibreOffice).",
    )
    max_office_uncompressed_bytes: int = Field(
        1024 * 1024 * 1024,
        ge=1,
        description="Zip containers (DOCX, PPTX, XLSX, ODF, EPUB) that expand beyond this are rejected (zip bomb).",
    )
    max_office_ratio: float = Field(
        200.0, gt=1, description="Zip members compressed more than this many times are rejected (zip bomb)."
    )
    follow_symlinks: bool = Field(False, description="Follow symbolic links when walking a folder.")


class VLLMSettings(_Section):
    base_url: str = Field("http://127.0.0.1:8000/v1", description="OpenAI-compatible base URL of the vLLM server.")
    model: str = Field("Qwen/Qwen2.5-VL-7B-Instruct", description="Model name as served (--served-model-name).")
    model_version: str | None = Field(
        None,
        description="Version label stored with predictions; defaults to the model name. Change it "
        "when the weights change so calibration starts over.",
    )
    api_key: SecretStr = Field(SecretStr("EMPTY"), description="Bearer token for the server.")
    concurrency: int = Field(32, ge=1, description="Requests in flight at once.")
    timeout_s: float = Field(120.0, gt=0, description="Per-request timeout in seconds.")
    max_retries: int = Field(4, ge=0, description="Retries on 429, 5xx and timeouts.")
    retry_backoff_s: float = Field(
        0.5, ge=0, description="First retry delay in seconds; doubles per retry (with jitter)."
    )
    retry_backoff_max_s: float = Field(30.0, ge=0, description="Upper bound of one retry delay.")
    jpeg_quality: int = Field(90, ge=50, le=100, description="JPEG quality of the resized image sent to the server.")
    max_tokens: int = Field(1024, ge=1, description="Completion token limit per request.")
    top_logprobs: int = Field(1, ge=0, le=20, description="top_logprobs to request (>=0).")
    model_family: Literal["auto", "qwen2_vl", "qwen2_5_vl", "qwen3_vl"] = Field(
        "auto",
        description="Qwen-VL family of the served model, which decides the box convention and the resize "
        "factor; auto: from the model name (a name that tells nothing is a configuration error unless "
        "coordinate_mode, resize_factor and min_pixels are all set).",
    )
    coordinate_mode: Literal["auto", "absolute_resized", "relative_1000"] = Field(
        "auto",
        description="How the model writes boxes; auto: by family (Qwen2.5-VL absolute pixels of the resized "
        "image; Qwen2-VL and Qwen3-VL 0-1000). Set it to override the family (e.g. a fine-tune).",
    )
    resize_factor: int | None = Field(
        None,
        ge=1,
        description="Both sides of the image sent are multiples of this (patch size x merge size); "
        "None: by family (Qwen2/2.5-VL 28, Qwen3-VL 32).",
    )
    min_pixels: int | None = Field(
        None,
        ge=1,
        description="Client-side resize lower bound (pixels); None: the family's processor default "
        "(Qwen2/2.5-VL 3136, Qwen3-VL 65536). Keep it at or above the server's own min_pixels.",
    )
    max_pixels: int = Field(
        1_003_520,
        ge=1,
        description="Client-side resize upper bound (pixels); keep it at or below the server's own max_pixels.",
    )
    return_token_ids: bool = Field(
        True,
        description="Ask vLLM for the prompt's token ids (request field return_token_ids) to count the image "
        "tokens it encoded exactly; servers without it are checked against a bound from usage.prompt_tokens.",
    )
    confidence_aggregator: Literal["min", "geomean", "joint"] = Field(
        "min",
        description="How a field's value-token probabilities become its confidence: the least probable "
        "token (min), their geometric mean, or their product (joint, shrinks with length). The default is "
        "the best calibrated on simulated logprobs (tests/test_vllm_confidence_sim.py).",
    )
    video_family: Literal["qwen2_5_vl", "internvl"] = Field(
        "qwen2_5_vl",
        description="Request shape for video: Qwen2.5-VL takes the sampled frames as one video_url "
        "(video/jpeg) and reads time from the sample rate; InternVL/InternVideo2.5 takes them as "
        "images, each after a 'FrameN (t s):' label it reads the time from.",
    )
    video_fps: float = Field(2.0, gt=0, description="Frames per second sampled from a video (Qwen2.5-VL default 2).")
    video_min_frames: int = Field(4, ge=2, description="Fewest frames sampled from a video.")
    video_max_frames: int = Field(768, ge=2, description="Most frames sampled from a video.")
    video_total_pixels: int = Field(
        90_316_800,
        ge=1,
        description="Pixel budget of one video over all its frames (qwen-vl-utils VIDEO_TOTAL_PIXELS; "
        "keep it within the server's --max-model-len).",
    )


class MinerUSettings(_Section):
    mode: Literal["cli", "http", "cloud"] = Field(
        "cli",
        description="Run MinerU as a CLI (its own virtualenv), call a self-hosted mineru-api (4.x, "
        "/v1/tasks), or the mineru.net cloud API (v4).",
    )
    command: str = Field(
        "mineru-kit parse {input} -o {output} --tier {tier} -f middle_json -p {pages}",
        description="CLI command template; {input}, {output}, {tier} and {pages} (1-based, e.g. '1-3,5') "
        "are substituted. A bare executable is looked up in `venv`/bin first, then on PATH. "
        "mineru 2.x: 'mineru -p {input} -o {output} -b pipeline'; magic-pdf 1.3: "
        "'magic-pdf -p {input} -o {output} -m auto'.",
    )
    venv: Path = Field(
        Path(".venv-mineru"),
        description="MinerU's own virtualenv (scripts/ensure-mineru.sh builds it from requirements/mineru.txt).",
    )
    tier: Literal["flash", "basic", "standard", "advanced"] = Field(
        "flash",
        description="Tier for pages with a text layer. flash needs no models (text layer, office "
        "documents); basic/standard/advanced need MinerU's models.",
    )
    scan_tier: Literal["basic", "standard", "advanced"] = Field(
        "basic",
        description="Tier for pages without a text layer when MinerU's models are present; without "
        "them such pages go through the CPU OCR path (RapidOCR) and the provenance says so.",
    )
    home: Path | None = Field(
        None,
        description="MINERU_HOME of the MinerU runs (models in <home>/models, from "
        "`mineru-kit models download`); None: MinerU's default, ~/.mineru.",
    )
    models_present: bool | None = Field(
        None,
        description="Whether MinerU's OCR models are installed; None: look for "
        "<home>/models/MinerU-4_models_onnx/.mineru_complete (mode=cli). mode=http/cloud: set it "
        "for the server (a GPU node usually has them).",
    )
    agreement: bool = Field(
        True,
        description="Score MinerU 4.x blocks (which carry no score) by agreement with the pymupdf "
        "layout backend on the same page; off: every 4.x block scores 0 and goes to review.",
    )
    api_url: str = Field("http://127.0.0.1:8010", description="mineru-api base URL (mode=http).")
    api_key: SecretStr = Field(SecretStr(""), description="mineru-api --api-key, if the server has one (mode=http).")
    poll_interval_s: float = Field(
        1.0, gt=0, description="First poll delay of a task (http/cloud); doubles up to 30 s."
    )
    timeout_s: float = Field(1800.0, gt=0, description="Timeout per document, in seconds.")
    version: str | None = Field(
        None,
        description="MinerU version label in the prediction identity (e.g. '4.0.12'). None: ask the "
        "CLI once with --version (mode=cli), the server's /v1/health (mode=http), or 'cloud'. The "
        "version MinerU writes into its output is recorded with each prediction.",
    )
    lang: str = Field("ch", description="OCR language hint (cloud `language`).")
    max_retries: int = Field(3, ge=0, description="HTTP retries on 429, 5xx, timeouts and connection errors.")
    cloud_url: str = Field("https://mineru.net/api/v4", description="mineru.net API base URL (mode=cloud).")
    cloud_token: SecretStr = Field(
        SecretStr(""),
        description="mineru.net API token (mode=cloud); in Airflow, the password of the `mineru` connection.",
    )
    cloud_model_version: Literal["pipeline", "vlm"] = Field(
        "pipeline", description="mineru.net model_version; pipeline gives layout scores in layout.json."
    )
    cloud_max_bytes: int = Field(
        200 * 1024 * 1024, ge=1, description="mineru.net file size limit, checked before upload."
    )
    cloud_max_pages: int = Field(600, ge=1, description="mineru.net page limit, checked before upload.")


class DocumentSettings(_Section):
    render_dpi: int = Field(144, ge=36, le=600, description="DPI of page images rendered for review and block boxes.")
    ocr_min_chars: int = Field(
        16,
        ge=0,
        description="A page whose text layer has fewer characters than this is OCRed.",
    )
    ocr_dpi: int = Field(150, ge=36, le=600, description="DPI at which pages are rendered for OCR.")
    ocr_max_side_px: int = Field(
        2000,
        ge=256,
        description="Cap on the long side of the OCR rendering (RapidOCR shrinks larger images "
        "anyway, so rendering beyond it only costs time).",
    )
    ocr_detect_max_side_px: int = Field(
        1600,
        ge=256,
        description="Long side of the image RapidOCR's text detector sees (scaled down from the OCR "
        "rendering; lines are still read from the full rendering). Its memory grows with the pixels: "
        "at 2000 px the detector alone needs ~400 MB.",
    )


class LabelStudioSettings(_Section):
    url: str = Field("http://127.0.0.1:8080", description="Label Studio base URL.")
    token: SecretStr = Field(SecretStr(""), description="Legacy API token or personal access token (JWT).")
    import_chunk: int = Field(
        1000,
        ge=1,
        description="Tasks per bulk import request (a chunk larger than import_max_bytes goes in several).",
    )
    import_max_bytes: int = Field(
        50_000_000,
        ge=1_000,
        description="Largest import request body; Label Studio refuses more than 250 MB "
        "(DATA_UPLOAD_MAX_MEMORY_SIZE) and holds a request's tasks in memory several times over.",
    )
    project_prefix: str = Field("labelloop", description="Prefix of the project titles we create.")
    media_mode: Literal["local", "s3", "presigned"] = Field(
        "local",
        description="How annotators' browsers get images: local files served by Label Studio, "
        "Label Studio's S3 storage on the object store, or presigned URLs in task data.",
    )
    local_files_root: Path | None = Field(
        None,
        description="LOCAL_FILES_DOCUMENT_ROOT of the Label Studio server (media_mode=local); "
        "defaults to the local object store root.",
    )
    s3_endpoint: str | None = Field(
        None,
        description="S3 endpoint URL as the Label Studio server reaches it (media_mode=s3); None: "
        "http(s)://<storage.endpoint>; '' when the server trusts its own S3_ENDPOINT env var.",
    )
    s3_access_key: SecretStr = Field(
        SecretStr(""),
        description="media_mode=s3: Label Studio's own READ-ONLY access key to the bucket (s3:GetObject, "
        "s3:ListBucket), stored in its S3 storage; required, and never the platform's storage keys.",
    )
    s3_secret_key: SecretStr = Field(SecretStr(""), description="media_mode=s3: secret of s3_access_key.")
    import_timeout_s: float = Field(600.0, gt=0, description="Timeout of one bulk import request.")
    import_lock_timeout_s: float = Field(
        3600.0, gt=0, description="How long an import waits for another import of the same spec to finish."
    )
    sync_page_size: int = Field(500, ge=1, le=1000, description="Tasks per page when syncing annotations.")
    sync_overlap_s: float = Field(
        5.0,
        ge=0,
        description="Longest a Label Studio write may take from stamping a task's updated_at to "
        "committing it (clock skew between its workers included): the sync re-reads what was stamped "
        "within this long before its previous read, by the server's clock; re-read annotations are "
        "deduplicated.",
    )


class PrelabelSettings(_Section):
    """What a pre-label batch does when predictions fail (see docs/architecture.md, Faults)."""

    max_attempts: int = Field(
        5, ge=1, description="Runs that may try an item whose prediction failed for a transient reason."
    )
    retry_backoff_s: float = Field(
        30.0,
        ge=0,
        description="Wait before a later run retries a transient failure; doubles with every attempt.",
    )
    max_transient_failure_share: float = Field(
        0.1,
        ge=0,
        le=1,
        description="The batch fails (task fails, CLI exits non-zero) when more of it failed for transient reasons.",
    )
    outage_after: int = Field(
        10,
        ge=1,
        description="Consecutive transient failures after which the model server counts as down: "
        "the batch stops taking items (they stay pending) and fails.",
    )


class RoutingSettings(_Section):
    use_manual_thresholds: bool = Field(
        False,
        description="Opt in to auto-accept by the manual thresholds below where calibration has certified "
        "none. Off: a field without a calibrated threshold is always reviewed. Decisions made this way are "
        "marked 'uncalibrated' in routing rows, reports and status.",
    )
    default_threshold: float = Field(
        0.9,
        ge=0,
        le=1.0001,
        description="Manual per-field threshold where none is calibrated (only with use_manual_thresholds).",
    )
    thresholds: dict[str, float] = Field(
        default_factory=dict,
        description="Manual overrides as {'spec.field': threshold}; > 1 means always review "
        "(only with use_manual_thresholds).",
    )
    audit_rate: float = Field(0.05, ge=0, le=1, description="Share of would-be auto-accepts sent to review as audit.")
    audit_salt: str = Field("labelloop-audit", description="Salt of the deterministic audit hash (change to resample).")
    review_failures: bool = Field(
        False,
        description="Send failed predictions to Label Studio for labelling from scratch (the task says why "
        "it has no pre-annotation); by default they wait for a retry instead.",
    )


class ExportSettings(_Section):
    val_fraction: float = Field(0.1, ge=0, lt=1, description="Share of items in the validation split.")
    max_failed_share: float = Field(
        0.05, ge=0, le=1, description="Quality gate: fail the run when more records fail validation."
    )
    qwen_coordinate_mode: Literal["absolute_resized", "relative_1000"] = Field(
        "absolute_resized",
        description="Box convention in exported answers: Qwen2.5-VL (absolute_resized) or "
        "Qwen2-VL/Qwen3-VL (relative_1000).",
    )
    min_pixels: int = Field(3136, description="min_pixels the trainer resizes with.")
    max_pixels: int = Field(12_845_056, description="max_pixels the trainer resizes with.")
    formats: list[Literal["qwen", "llamafactory", "swift"]] = Field(
        default_factory=lambda: ["qwen", "llamafactory", "swift"], description="Formats written."
    )
    image_layout: Literal["pool", "self_contained"] = Field(
        "pool",
        description="pool: versions point into the spec's content-addressed image pool "
        "(datasets/<spec>/images/, written once per image; annotation files name ../images/...); "
        "self_contained: each version also gets its own images/ folder, made by hard links on a local "
        "store and server-side copies on S3.",
    )
    workers: int = Field(
        0,
        ge=0,
        description="Processes that build a large version, each a share of its records (0: one per CPU, "
        "at most 4; 1: this process only). The files are the same however many build them.",
    )
    parallel_min_records: int = Field(
        5000, ge=1, description="Versions with fewer records are built in one process (starting workers costs seconds)."
    )


class TrainingSettings(_Section):
    launcher: Literal["subprocess", "http", "kubernetes"] = Field(
        "subprocess", description="How the training DAG starts training."
    )
    command: str = Field(
        "python -m labelloop.training.check_dataset {annotation_path} {data_path}",
        description="Command template for launcher=subprocess. Production value: the "
        "qwen-vl-finetune torchrun command (docs/operations.md).",
    )
    webhook_url: str | None = Field(None, description="URL POSTed to when launcher=http.")
    workdir: Path = Field(Path(".labelloop/training"), description="Where launches run and log.")


class CalibrationSettings(_Section):
    target_error: float = Field(
        0.02,
        gt=0,
        lt=1,
        description="Target error of auto-accepts: share of auto-accepted records with any field a reviewer "
        "would change (per_field: share of values of each field).",
    )
    per_field: bool = Field(False, description="Hold the target per field instead of per record.")
    min_samples: int = Field(50, ge=1, description="Minimum reviewed records (values) above a threshold.")
    confidence_level: float = Field(0.95, gt=0.5, lt=1, description="Level of the guarantee (1 - delta).")
    bound: Literal["auto", "betting", "clopper_pearson", "wilson"] = Field(
        "auto",
        description="auto: inverse-probability-weighted betting e-process (valid for weighted data and "
        "across nightly reruns), Clopper-Pearson for one look at an unweighted sample; wilson is "
        "anti-conservative at small rates and only for comparison.",
    )


class SpecSettings(_Section):
    dirs: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description="Extra folders of task specs, each holding NAME.yaml and the label config it names "
        "(a JSON list, or paths joined by ':'); a spec here replaces a shipped one of the same name.",
    )

    @field_validator("dirs", mode="before")
    @classmethod
    def _split_paths(cls, v: Any) -> Any:
        """Accept PATH-style strings too, as users type them into an environment variable."""
        if isinstance(v, str):
            v = v.strip()
            if v.startswith("["):
                return json.loads(v)
            return [p for p in v.split(os.pathsep) if p]
        return v

    @field_validator("dirs")
    @classmethod
    def _expand(cls, v: list[Path]) -> list[Path]:
        return [Path(os.path.expanduser(p)) for p in v]


class Settings(BaseSettings):
    """Everything labelloop needs; sections mirror the pipeline stages."""

    model_config = SettingsConfigDict(
        env_prefix="LABELLOOP_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    home: Path = Field(Path(".labelloop"), description="Working folder for embedded defaults (DB, objects, reports).")
    db: DatabaseSettings = Field(default_factory=DatabaseSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    vllm: VLLMSettings = Field(default_factory=VLLMSettings)
    mineru: MinerUSettings = Field(default_factory=MinerUSettings)
    documents: DocumentSettings = Field(default_factory=DocumentSettings)
    prelabel: PrelabelSettings = Field(default_factory=PrelabelSettings)
    label_studio: LabelStudioSettings = Field(default_factory=LabelStudioSettings)
    routing: RoutingSettings = Field(default_factory=RoutingSettings)
    export: ExportSettings = Field(default_factory=ExportSettings)
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    calibration: CalibrationSettings = Field(default_factory=CalibrationSettings)
    specs: SpecSettings = Field(default_factory=SpecSettings)

    @field_validator("home")
    @classmethod
    def _expand_home(cls, v: Path) -> Path:
        return Path(os.path.expanduser(v))

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        check_environment(os.environ)
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = os.environ.get(CONFIG_FILE_ENV)
        if path:
            if not Path(path).is_file():
                raise FileNotFoundError(f"{CONFIG_FILE_ENV}={path}: no such file")
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=path))
        return tuple(sources)

    def redacted(self) -> dict[str, Any]:
        """A JSON-able dump with every secret (and password inside URLs) masked."""
        data = self.model_dump(mode="json")
        data["db"]["url"] = self.db.url_redacted
        return data


def redact_url(url: str) -> str:
    """Hide the password part of a URL such as postgresql://user:pw@host/db."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a SQLAlchemy URL: mask anything between ':' and '@'
        import re

        return re.sub(r"(//[^:/@]+:)[^@]+@", r"\1***@", url)


def _env_names(model: type[BaseModel], prefix: str) -> tuple[set[str], set[str]]:
    """(leaf variable names, names of mapping settings whose keys may extend the name)."""
    leaves: set[str] = set()
    mappings: set[str] = set()
    for name, field in model.model_fields.items():
        env = f"{prefix}{name.upper()}"
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            sub_leaves, sub_maps = _env_names(ann, env + "__")
            leaves |= sub_leaves | {env}  # a whole section may come as JSON
            mappings |= sub_maps
            continue
        leaves.add(env)
        if ann is dict or get_origin(ann) is dict or any(get_origin(a) is dict for a in get_args(ann)):
            mappings.add(env)
    return leaves, mappings


def check_environment(environ: Mapping[str, str]) -> None:
    """Refuse unknown ``LABELLOOP_*`` variables, naming the closest known one.

    pydantic-settings reads the variables it knows and ignores the rest, so a misspelt
    ``LABELLOOP_VLLM__MODLE`` (or ``LABELLOOP_VLLM_MODEL`` with one underscore) would leave the
    default in force without a word. Names are compared case-insensitively, as the settings read them.
    """
    leaves, mappings = _env_names(Settings, ENV_PREFIX)
    unknown = []
    for raw in environ:
        name = raw.upper()
        if not name.startswith(ENV_PREFIX) or name in leaves or name in NON_SETTING_ENV:
            continue
        if name.startswith(NON_SETTING_ENV_PREFIXES) or any(name.startswith(m + "__") for m in mappings):
            continue
        unknown.append(raw)
    if unknown:
        lines = []
        # compared without the common prefix, which would make every name look alike
        known = sorted(n[len(ENV_PREFIX) :] for n in leaves)
        for raw in sorted(unknown):
            close = difflib.get_close_matches(raw.upper()[len(ENV_PREFIX) :], known, n=1, cutoff=0.75)
            lines.append(f"{raw}" + (f" (did you mean {ENV_PREFIX}{close[0]}?)" if close else ""))
        raise ValueError(
            "unknown labelloop environment variable(s): " + "; ".join(lines) + ". Every setting is listed in "
            "docs/configuration.md (labelloop config docs)."
        )


def iter_setting_docs(model: type[BaseModel] = Settings, prefix: str = "") -> list[tuple[str, str, str]]:
    """(env var, default, description) for every leaf setting; feeds docs/configuration.md."""
    rows: list[tuple[str, str, str]] = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            rows.extend(iter_setting_docs(ann, f"{prefix}{name.upper()}__"))
            continue
        default = field.get_default(call_default_factory=True)
        if isinstance(default, SecretStr):
            # a default URL holds no password worth hiding; every other secret is shown as such
            shown = redact_url(default.get_secret_value()) if name == "url" else "(secret)"
        elif isinstance(default, Path):
            shown = str(default)
        else:
            shown = json.dumps(default) if default is not None else "null"
        rows.append((f"LABELLOOP_{prefix}{name.upper()}", shown, field.description or ""))
    return rows
