"""Uploads to the Hugging Face Hub."""

from pathlib import Path

from huggingface_hub import HfApi


def push_folder(folder: str | Path, repo_id: str, private: bool = False, token: str | None = None) -> str:
    """Create `repo_id` if needed and upload `folder` to it; returns the commit URL."""
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    info = api.upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        repo_type="model",
        commit_message="Upload model converted with hf-gqa",
    )
    return str(getattr(info, "commit_url", info))


__all__ = ["push_folder"]
