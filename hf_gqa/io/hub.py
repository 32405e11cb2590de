"""Uploads to the Hugging Face Hub."""

from pathlib import Path

from huggingface_hub import HfApi

from ..errors import HfGqaError


def push_folder(
    folder: str | Path,
    repo_id: str,
    private: bool = False,
    token: str | None = None,
    commit_message: str = "Upload model converted with hf-gqa",
) -> str:
    """Create `repo_id` if needed and upload `folder` to it; returns the commit URL. A failed upload (offline, no
    token, no access, network) is one line that says the folder is kept."""
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        info = api.upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            repo_type="model",
            commit_message=commit_message,
        )
    except Exception as error:  # offline mode, no token, no access (OSErrors), the HTTP client's network errors
        if not isinstance(error, (OSError, ValueError)) and not _from_network_library(error):
            raise
        lines = str(error).strip().splitlines()
        raise HfGqaError(
            f"cannot push to {repo_id!r} ({lines[0] if lines else type(error).__name__}); the output is kept in "
            f"{str(folder)!r}"
        ) from None
    return str(getattr(info, "commit_url", info))


def _from_network_library(error: BaseException) -> bool:
    return type(error).__module__.split(".")[0] in ("huggingface_hub", "httpx", "httpx2", "requests", "urllib3")


__all__ = ["push_folder"]
