"""Sources of multitrack songs: the Slakh layout, General MIDI classes, the FluidSynth renderer, the demo corpus."""
