"""MotionAura-JAX: text-to-video through masked discrete diffusion (JAX/Flax).

Importing the package is cheap: it imports JAX but never TensorFlow (metric writers and
TFDS are imported lazily where they are used).
"""

__version__ = "0.1.0"
