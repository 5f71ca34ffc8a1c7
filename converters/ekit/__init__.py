"""ekit — the helpers every edgekiln converter script imports (copied next to it in the job).

Plain Python + numpy + Pillow only: it runs in every build environment, so anything heavier is
imported lazily inside a function. One package, split by concern:

* ``ekit.steps``   the job: ``step(__file__)``, ``params``, ``paths``, ``work``, ``finish``, ``fail``,
                   ``log``, ``warn``, ``write_json``, ``jsonable``, ``unmeasured``, ``where``,
                   ``finish_validation``;
* ``ekit.images``  images and preprocessing: ``list_images``, ``load_rgb``, ``preprocess``,
                   ``describe_preprocessing``, ``input_hw``;
* ``ekit.data``    labels, image sets (``load_set``, ``synthetic_set``), the reference file
                   (``write_reference``, ``read_reference``), ``reference_inputs``, ``write_calibration``;
* ``ekit.comparison`` validation: ``compare``, ``latency``, ``tensor_spec``, ``file_size``;
* ``ekit.task``, ``ekit.measure``  what the outputs are (detector, segmentation, map) and their metrics;
* ``ekit.recover`` the int8 recovery search (--recover).

``import ekit`` gives the names of steps, images, data and comparison as ``ekit.<name>`` (what every
template uses); ``from ekit import task`` etc. the others. The conventions of the input spec are in
``ekit.images``; the contract with edgekiln in converters/README.md.
"""

from . import comparison as _comparison, data as _data, images as _images, steps as _steps

for _module in (_steps, _images, _data, _comparison):  # ekit.<name> for every helper a script calls
    globals().update({k: v for k, v in vars(_module).items() if not k.startswith("__")})
del _module
