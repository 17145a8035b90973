"""Cycle storms: plan, pace, publish and follow one event at many clients."""
