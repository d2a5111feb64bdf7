import os

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

#: site.py runs it in every interpreter: ESPnet learns our classes with no import by the user
STARTUP_HOOK = "espnet_lowrank.pth"


class build_py_with_startup_hook(build_py):
    """Also puts :data:`STARTUP_HOOK` at the top of what is installed (site-packages itself): a wheel
    takes it from the build dir; an editable install (PEP 660) builds elsewhere and installs the
    unpacked wheel that ``install_lib`` names, so it goes there."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            target = self.get_finalized_command("install").install_lib
        else:
            target = self.build_lib
        self.copy_file(STARTUP_HOOK, os.path.join(target, STARTUP_HOOK), preserve_mode=False)


setup(
    name="espnet-lowrank",
    version="0.1.0",
    description="Low-rank (W = U·V) Conformer ASR training from scratch, as an ESPnet plugin",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["espnet_lowrank", "espnet_lowrank.*"]),
    python_requires=">=3.11,<3.13",  # what CI tests: 3.11 (espnet 202511) and 3.12 (espnet 202611)
    install_requires=[
        "espnet>=202511",
        "torch",
        # torchaudio 2.11.1 declares torch>=2.11 but its library needs a symbol that torch 2.13 brought
        # (torch_exception_get_what_without_backtrace); espnet 202511 holds torch at <=2.12 (its
        # setuptools<74 pin), so pip paired them and the import failed. 2.11.0 loads on torch 2.11.0, 2.12.1, 2.14.1.
        "torchaudio!=2.11.1",
        "sentencepiece",
        "pyyaml",
        "soundfile",
        # scoring (stage 13) and the embedded corpus's offline speech synthesis
        "jiwer",
        "espeakng-loader",
        # unpacks the stage-14 pack for Speech2Text (espnet 202611 brings it, 202511 does not)
        "espnet_model_zoo",
        "typeguard",
        # ESPnet's trainer plots attention after each epoch and crashes without it.
        "matplotlib",
        "tqdm",
        # ESPnet's trainer imports it whenever use_tensorboard is true (the default).
        "tensorboard",
        # ESPnet computes validation CER/WER with it but does not require it.
        "editdistance",
    ],
    extras_require={"test": ["pytest", "pytest-timeout"]},
    cmdclass={"build_py": build_py_with_startup_hook},
    entry_points={"console_scripts": ["espnet-lowrank=espnet_lowrank.cli:main"]},
)
