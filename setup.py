"""Build steps that pyproject.toml cannot declare: the Cython hot path and the gRPC stubs.

The stubs are generated from protos/ into mve/_proto/ at build time and never committed.
Each .proto is compiled as ``mve/_proto/<name>.proto`` so that the generated modules import
each other as ``mve._proto.<name>_pb2`` while the proto packages (``inference``, ``mve.v1``)
and so the wire names stay as the protocol defines them.
"""

import os
import shutil
import subprocess
import sysconfig
import tempfile
from pathlib import Path

import numpy
from Cython.Build import cythonize
from setuptools import Command, Extension, setup
from setuptools.command.build_py import build_py
from setuptools.command.develop import develop

ROOT = Path(__file__).parent.resolve()
PROTOS = ROOT / "protos"
PROTO_OUT = ROOT / "mve" / "_proto"


def generate_grpc_stubs():
    """Compile every .proto under protos/ into mve/_proto/ (pb2, pb2_grpc and .pyi)."""
    import grpc_tools
    from grpc_tools import protoc

    include = str(Path(grpc_tools.__file__).parent / "_proto")
    with tempfile.TemporaryDirectory() as staging:
        staged = []
        for proto in sorted(PROTOS.rglob("*.proto")):
            target = Path(staging) / "mve" / "_proto" / proto.name
            if target.exists():
                raise RuntimeError(f"two protos named {proto.name}: names under protos/ must be unique")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(proto, target)
            staged.append(str(target.relative_to(staging)))
        args = [
            "grpc_tools.protoc",
            f"-I{staging}",
            f"-I{include}",
            f"--python_out={ROOT}",
            f"--pyi_out={ROOT}",
            f"--grpc_python_out={ROOT}",
            *staged,
        ]
        if protoc.main(args) != 0:
            raise RuntimeError("protoc failed on " + " ".join(staged))


class BuildProtos(Command):
    """``python setup.py build_protos``: regenerate the gRPC stubs."""

    description = "generate Python gRPC stubs from protos/"
    user_options = []

    def initialize_options(self):
        pass

    def finalize_options(self):
        pass

    def run(self):
        generate_grpc_stubs()


class BuildPyWithProtos(build_py):
    def run(self):
        generate_grpc_stubs()
        super().run()


class DevelopWithProtos(develop):
    def run(self):
        generate_grpc_stubs()
        super().run()


def have_nghttp2() -> bool:
    """Whether the C compiler finds libnghttp2's header (Debian: libnghttp2-dev)."""
    compiler = (sysconfig.get_config_var("CC") or "cc").split()
    try:
        done = subprocess.run([*compiler, "-E", "-x", "c", "-"], input="#include <nghttp2/nghttp2.h>\n",
                              capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


extensions = [
    Extension(
        "mve._fastroute",
        ["mve/_fastroute.pyx"],
        include_dirs=[numpy.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        extra_compile_args=["-O3"],
    )
]
# The native HTTP/2 transport (docs/transport.md) is optional: built only where libnghttp2's
# headers are; without it everything else builds and the proxy runs on grpc.aio.
if have_nghttp2():
    extensions.append(Extension("mve._h2transport", ["mve/_h2transport.pyx"], libraries=["nghttp2"],
                                extra_compile_args=["-O3"]))
    extensions.append(Extension("mve._h2client", ["mve/_h2client.pyx"], libraries=["nghttp2"],
                                extra_compile_args=["-O3"]))
elif not os.environ.get("MVE_QUIET_BUILD"):
    print("note: nghttp2/nghttp2.h not found: building without mve._h2transport and mve._h2client, the "
          "optional native HTTP/2 transport and client (sudo apt-get install libnghttp2-dev, then rebuild)")

setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        compiler_directives={
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
        },
    ),
    cmdclass={"build_protos": BuildProtos, "build_py": BuildPyWithProtos, "develop": DevelopWithProtos},
)
