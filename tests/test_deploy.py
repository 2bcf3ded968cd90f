"""deploy/: the Kubernetes Jobs parse and run exactly the three cluster-job commands; the Slurm script parses."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml

DEPLOY = Path(__file__).parent.parent / "deploy"


def test_the_kubernetes_jobs_plan_write_an_indexed_slice_each_and_finalize_to_s3_with_secret_credentials() -> None:
    docs = list(yaml.safe_load_all((DEPLOY / "k8s-indexed-job.yaml").read_text()))
    jobs = {doc["metadata"]["labels"]["capshard/step"]: doc for doc in docs}
    assert [doc["kind"] for doc in docs] == ["Job"] * 3 and list(jobs) == ["plan", "write", "finalize"]
    containers = {step: job["spec"]["template"]["spec"]["containers"][0] for step, job in jobs.items()}
    plan, write, finalize = (containers[s]["args"] for s in ("plan", "write", "finalize"))
    out = plan[plan.index("--out") + 1]
    assert out.startswith("s3://") and plan[0] == "plan" and plan[1].startswith("s3://")
    assert write == ["write", out, "--task", "$(JOB_COMPLETION_INDEX)", "--tasks", "$(CAPSHARD_TASKS)"]
    assert finalize == ["finalize", out]
    spec = jobs["write"]["spec"]
    env = {e["name"]: e for e in containers["write"]["env"]}
    assert spec["completionMode"] == "Indexed" and str(spec["completions"]) == env["CAPSHARD_TASKS"]["value"]
    assert "job-completion-index" in env["JOB_COMPLETION_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"]
    for step, container in containers.items():
        assert container["envFrom"] == [{"secretRef": {"name": "capshard-s3"}}], step
        assert container["image"] == containers["plan"]["image"]
        assert jobs[step]["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True


def test_the_slurm_script_parses_and_runs_the_three_commands_chained() -> None:
    script = DEPLOY / "slurm-array.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    text = script.read_text()
    commands = re.findall(r"^\s+(capshard (?:plan|write|finalize) .*)$", text, re.MULTILINE)
    assert commands == [
        'capshard plan "$SOURCE" --images "$IMAGES" --out "$OUT" --max-images-per-shard 10000',
        'capshard write "$OUT" --task "$((SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN))" '
        '--tasks "$SLURM_ARRAY_TASK_COUNT"',
        'capshard finalize "$OUT"',
    ]
    assert 'OUT=${CAPSHARD_OUT:-s3://' in text
    assert '--dependency "afterok:$plan" --array' in text and '--dependency "afterok:$write"' in text
