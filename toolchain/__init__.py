"""edgec: a compiler from trained models to verified, budgeted TFLite artifacts.

The package is imported as ``edgec``. Importing it is cheap: TensorFlow, Keras
and the TFLite runtimes are imported only inside the functions that need them.
"""

__version__ = "0.1.0"
