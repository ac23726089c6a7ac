"""`sumtune export --push-to-hub REPO`: upload an exported directory with huggingface_hub
(`HfApi.create_repo`, then `upload_folder`). `check_push` refuses, in one line and before the
export loads or writes anything, what would fail only at the upload: a bad repo id, offline
mode, no token, an unreachable Hub, an adapter whose base model has no Hub id."""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import HfApi, constants, get_token
from huggingface_hub.utils import HfHubHTTPError, HFValidationError, validate_repo_id

from sumtune.download import _first_line, _is_offline
from sumtune.errors import UserError
from sumtune.offline import hub_offline, hub_reachable


def _later(repo: str) -> str:
    return f"export with --output-dir only and upload the directory later (`hf upload {repo} DIR`)"


def check_push(repo: str, adapter: bool, base_id: str | None) -> str:
    """The token to push with, or a one-line UserError saying why a push to `repo` cannot work."""
    try:
        validate_repo_id(repo)
    except HFValidationError as e:
        raise UserError(f"--push-to-hub {repo}: {_first_line(e)}") from None
    if hub_offline():
        raise UserError(f"cannot push to {repo}: the Hugging Face Hub is in offline mode (HF_HUB_OFFLINE or "
                        f"TRANSFORMERS_OFFLINE is set); unset it, or {_later(repo)}")
    token = get_token()
    if not token:
        raise UserError(f"cannot push to {repo}: no Hugging Face token; log in with `hf auth login` or set HF_TOKEN")
    if adapter and not base_id:
        raise UserError(f"cannot push the adapter to {repo} without its base model's Hub id (the run trained on a "
                        "local directory that does not record one); pass --base-model ID")
    if not hub_reachable():
        raise UserError(f"cannot push to {repo}: the Hub ({constants.ENDPOINT}) is unreachable; check the network, "
                        f"or {_later(repo)}")
    return token


def push(folder: Path, repo: str, private: bool, token: str, ignore: list[str]) -> str:
    """Create `repo` (kept if it exists; `private` only applies to a new repo) and upload `folder`
    as one commit; returns the repo's URL. Network and Hub refusals: one line naming what was written."""
    api = HfApi(token=token)
    try:
        url = api.create_repo(repo, repo_type="model", private=True if private else None, exist_ok=True)
        api.upload_folder(repo_id=url.repo_id, folder_path=str(folder), repo_type="model", ignore_patterns=ignore,
                          commit_message=f"sumtune export ({folder.name})")
    except Exception as e:  # noqa: BLE001  (sorted below: the network, the Hub's answer, else re-raised)
        if _is_offline(e):
            raise UserError(f"cannot reach the Hugging Face Hub to push {repo} ({_first_line(e)}); {folder} is "
                            f"written: upload it later with `hf upload {repo} {folder}`") from None
        if isinstance(e, HfHubHTTPError):
            raise UserError(f"the Hub refused the push to {repo}: {_first_line(e)}; {folder} is written: "
                            f"upload it later with `hf upload {repo} {folder}`") from None
        raise
    print(f"pushed {folder} to {url}")
    return str(url)
