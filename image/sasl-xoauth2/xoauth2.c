/*
 * XOAUTH2, the client side, as a Cyrus SASL plugin for Postfix's smtp client.
 *
 * Postfix asks its smtp_sasl_password_maps for "user:password"; the relay's supervisor answers
 * that lookup (a socketmap) with the mailbox to send as and a current OAuth2 access token. This
 * mechanism sends them as Google and Microsoft define XOAUTH2:
 *
 *     base64("user=" user "\x01auth=Bearer " token "\x01\x01")
 *
 * A relayhost that refuses the token answers 334 with a JSON error; the mechanism answers with
 * an empty line, and the relayhost then fails the login (535): Postfix defers the mail and
 * tries again with the token of its next lookup.
 *
 * Debian's libsasl2-modules-kdexoauth2 does not work with Postfix: it reads the token through
 * the password callback as if it were a "simple" callback (a different signature), and the
 * login fails with "invalid parameter supplied". This one reads it as the secret it is.
 */

#include <stdio.h>
#include <string.h>

#include <sasl/sasl.h>
#include <sasl/saslplug.h>

typedef struct {
    char *out;
    unsigned out_len;
    int sent;
} xoauth2_context;

static int xoauth2_new(void *glob_context, sasl_client_params_t *params, void **conn_context)
{
    (void)glob_context;
    xoauth2_context *context = params->utils->malloc(sizeof(*context));
    if (context == NULL) {
        return SASL_NOMEM;
    }
    memset(context, 0, sizeof(*context));
    *conn_context = context;
    return SASL_OK;
}

/* The login: the authentication name callback, as Postfix registers it. */
static int xoauth2_user(const sasl_utils_t *utils, const char **user)
{
    sasl_getsimple_t *callback = NULL;
    void *callback_context = NULL;
    unsigned len = 0;
    int result = utils->getcallback(utils->conn, SASL_CB_AUTHNAME,
                                    (sasl_callback_ft *)&callback, &callback_context);
    if (result != SASL_OK || callback == NULL) {
        return result == SASL_OK ? SASL_BADPARAM : result;
    }
    result = callback(callback_context, SASL_CB_AUTHNAME, user, &len);
    if (result == SASL_OK && (*user == NULL || **user == '\0')) {
        return SASL_BADPARAM;
    }
    return result;
}

/* The token: the password callback, which returns a secret. */
static int xoauth2_token(const sasl_utils_t *utils, sasl_secret_t **token)
{
    sasl_getsecret_t *callback = NULL;
    void *callback_context = NULL;
    int result = utils->getcallback(utils->conn, SASL_CB_PASS,
                                    (sasl_callback_ft *)&callback, &callback_context);
    if (result != SASL_OK || callback == NULL) {
        return result == SASL_OK ? SASL_BADPARAM : result;
    }
    result = callback(utils->conn, callback_context, SASL_CB_PASS, token);
    if (result == SASL_OK && (*token == NULL || (*token)->len == 0)) {
        return SASL_BADPARAM;
    }
    return result;
}

static int xoauth2_step(void *conn_context, sasl_client_params_t *params, const char *serverin,
                        unsigned serverinlen, sasl_interact_t **prompt_need,
                        const char **clientout, unsigned *clientoutlen,
                        sasl_out_params_t *oparams)
{
    xoauth2_context *context = conn_context;
    const sasl_utils_t *utils = params->utils;
    (void)serverin;
    (void)prompt_need;
    *clientout = NULL;
    *clientoutlen = 0;

    if (context->sent) {
        /* The relayhost's error challenge (JSON): an empty answer lets it fail the login. */
        (void)serverinlen;
        *clientout = "";
        oparams->doneflag = 1;
        return SASL_OK;
    }

    const char *user = NULL;
    sasl_secret_t *token = NULL;
    int result = xoauth2_user(utils, &user);
    if (result != SASL_OK) {
        utils->seterror(utils->conn, 0, "XOAUTH2: no user to log in as");
        return result;
    }
    result = xoauth2_token(utils, &token);
    if (result != SASL_OK) {
        utils->seterror(utils->conn, 0, "XOAUTH2: no access token");
        return result;
    }
    result = params->canon_user(utils->conn, user, 0, SASL_CU_AUTHID | SASL_CU_AUTHZID, oparams);
    if (result != SASL_OK) {
        return result;
    }

    size_t user_len = strlen(user);
    size_t len = 5 + user_len + 1 + 12 + token->len + 2;
    if (len > 65535) {
        utils->seterror(utils->conn, 0, "XOAUTH2: user and token too long");
        return SASL_BADPARAM;
    }
    context->out = utils->malloc(len + 1);
    if (context->out == NULL) {
        return SASL_NOMEM;
    }
    char *p = context->out;
    memcpy(p, "user=", 5);
    p += 5;
    memcpy(p, user, user_len);
    p += user_len;
    memcpy(p, "\001auth=Bearer ", 13);
    p += 13;
    memcpy(p, token->data, token->len);
    p += token->len;
    memcpy(p, "\001\001", 2);
    p += 2;
    *p = '\0';
    context->out_len = (unsigned)len;
    context->sent = 1;

    *clientout = context->out;
    *clientoutlen = context->out_len;
    oparams->doneflag = 1;
    oparams->mech_ssf = 0;
    oparams->maxoutbuf = 0;
    oparams->encode_context = NULL;
    oparams->encode = NULL;
    oparams->decode_context = NULL;
    oparams->decode = NULL;
    oparams->param_version = 0;
    return SASL_OK;
}

static void xoauth2_dispose(void *conn_context, const sasl_utils_t *utils)
{
    xoauth2_context *context = conn_context;
    if (context == NULL) {
        return;
    }
    if (context->out != NULL) {
        /* The token was in it. */
        memset(context->out, 0, context->out_len);
        utils->free(context->out);
    }
    utils->free(context);
}

static sasl_client_plug_t xoauth2_plugins[] = {{
    "XOAUTH2",                                         /* mech_name */
    0,                                                 /* max_ssf */
    SASL_SEC_NOANONYMOUS | SASL_SEC_PASS_CREDENTIALS,  /* security_flags */
    SASL_FEAT_WANT_CLIENT_FIRST | SASL_FEAT_ALLOWS_PROXY, /* features */
    NULL,                                              /* required_prompts */
    NULL,                                              /* glob_context */
    &xoauth2_new,                                      /* mech_new */
    &xoauth2_step,                                     /* mech_step */
    &xoauth2_dispose,                                  /* mech_dispose */
    NULL,                                              /* mech_free */
    NULL,                                              /* idle */
    NULL,                                              /* spare_fptr1 */
    NULL                                               /* spare_fptr2 */
}};

int sasl_client_plug_init(const sasl_utils_t *utils, int maxversion, int *out_version,
                          sasl_client_plug_t **pluglist, int *plugcount)
{
    if (maxversion < SASL_CLIENT_PLUG_VERSION) {
        utils->seterror(utils->conn, 0, "XOAUTH2: SASL client plugin version mismatch");
        return SASL_BADVERS;
    }
    *out_version = SASL_CLIENT_PLUG_VERSION;
    *pluglist = xoauth2_plugins;
    *plugcount = 1;
    return SASL_OK;
}
