"""End-to-end tests: each starts real servers on loopback (our app as `make run` serves it, scripted upstreams,
llama.cpp, redis, a browser) and checks one surface from the outside. Grouped by the surface they exercise."""
