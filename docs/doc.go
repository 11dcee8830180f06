// Package docs holds the project's manual as Markdown files; it has no code.
// Its test checks that every relative link and #anchor in the repository's
// Markdown files resolves, so moving or renaming a section cannot silently
// break the README's and the manual's cross-references.
package docs
