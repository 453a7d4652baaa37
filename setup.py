"""lrmjax: reinforcement learning for large reasoning models in JAX/Flax."""

from setuptools import find_packages, setup

setup(
    name="lrmjax",
    version="0.1.0",
    description="RL with verifiable rewards for reasoning language models, in JAX/Flax.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["lrmjax", "lrmjax.*"]),
    package_data={"lrmjax.data": ["fixtures/*.jsonl"], "lrmjax.envs": ["corpus/*.jsonl"]},
    install_requires=[
        "jax>=0.7.0",
        "flax>=0.11.0",
        "optax>=0.2.5",
        "orbax-checkpoint>=0.11.0",
        "ml-collections>=1.0.0",
        "tensorflow-datasets>=4.9.9",
        "grain>=0.2.12",
        "array-record>=0.8.1",
        "importlib_resources>=6.0",  # tfds 4.9.x imports it when building a packaged builder
        "absl-py>=2.1.0",
        "numpy>=1.26",
        "tokenizers>=0.21.0",
        "safetensors>=0.5.0",
        "tensorboardX>=2.6.2",
        "tqdm>=4.66",
        "jinja2>=3.1.0",
        "ml-dtypes>=0.5.0",
        "math-verify>=0.8.0",
        "reasoning-gym>=0.1.19",
        "matplotlib>=3.8",
        "scipy>=1.11",  # t-intervals of sweeps (lrmjax.train.sweep)
        "bm25s>=0.3.16",  # the `search` tool (lrmjax.envs.tools)
    ],
    extras_require={
        "test": [
            "pytest>=8.0",
            "pytest-xdist>=3.6",
            "hypothesis>=6.100",
            "ruff>=0.6",
            "nbformat>=5.10",
            "nbclient>=0.10",
            "ipykernel>=6.29",
        ],
        "hf": ["torch==2.13.0", "transformers>=4.51.0", "peft>=0.17.0"],
    },
)
