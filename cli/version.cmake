# Writes cli/version.h (run at every build by the regfs_version target, so
# that `regfs --version` names the revision the binary was built from, not
# the one CMake was configured at). Inputs: SRC (source dir), OUT (header),
# VERSION (project version), REVISION (given with -DREGFS_GIT_REVISION, may
# be empty). configure_file leaves the header alone when nothing changed, so
# nothing is rebuilt then.
if(NOT REVISION)
  find_package(Git QUIET)
  if(GIT_FOUND AND EXISTS "${SRC}/.git")
    execute_process(COMMAND "${GIT_EXECUTABLE}" describe --always --dirty --abbrev=12
                    WORKING_DIRECTORY "${SRC}"
                    OUTPUT_VARIABLE REVISION OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
  endif()
  if(NOT REVISION)
    set(REVISION unknown)
  endif()
endif()
set(PROJECT_VERSION "${VERSION}")
set(REGFS_GIT_REVISION "${REVISION}")
configure_file("${SRC}/cli/version.h.in" "${OUT}" @ONLY)
